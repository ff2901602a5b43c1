"""SOAP (optimizers/soap.py) against a float64 NumPy reference written from the update formula in its docstring, plus
a state_dict round trip across a refresh, the FLOPs figure against torch's FlopCounterMode, argument checks and a
few training steps of a small GPT through build_optimizer."""

import copy
import io

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import optimizers
from errors import ConfigError
from optimizers.build import build_optimizer, check_recipe
from optimizers.soap import SOAP, project

SHAPES = [(12, 5), (5, 12), (7, 7), (9,)]  # tall, wide, square, 1-D
FACTORS = [1.0, 0.5, 0.25, 0.8, 1.3, 0.9, 1.1, 0.6, 1.0, 0.7, 1.2, 0.4, 0.95, 0.3]  # 14 steps: init + t = 1..13
MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm"}


# ---------------------------------------------------------------------------------------------------------------
# float64 reference, from the formula (explicit Q_Lᵀ G Q_R products, identity for a side without preconditioner)


def rot(x, q):
    """Into the eigenbasis: Q_Lᵀ X Q_R (matrix), Qᵀ x (vector)."""
    return q[0].T @ x if x.ndim == 1 else q[0].T @ x @ q[1]


def unrot(x, q):
    """Back to the parameter basis: Q_L X Q_Rᵀ, Q x."""
    return q[0] @ x if x.ndim == 1 else q[0] @ x @ q[1].T


def outer(g, k):
    """G Gᵀ (k = 0), Gᵀ G (k = 1); g gᵀ for a vector."""
    return np.outer(g, g) if g.ndim == 1 else (g @ g.T if k == 0 else g.T @ g)


def soap_ref(p, g, s, lr, wd, betas, shampoo_beta, eps, freq, max_dim, precondition_1d, normalize, correct_bias):
    b1, b2 = betas
    sb = shampoo_beta if shampoo_beta >= 0 else b2
    if "t" not in s:  # first step: preconditioners and eigh bases only, p unchanged
        on = [False] if p.ndim == 1 and not precondition_1d else [d <= max_dim for d in p.shape]
        s["on"], s["t"], s["M"], s["V"] = on, 0, np.zeros_like(p), np.zeros_like(p)
        s["GG"] = [(1 - sb) * outer(g, k) if o else None for k, o in enumerate(on)]
        s["Q"] = []
        for k, o in enumerate(s["on"]):
            if o:
                _, vecs = np.linalg.eigh(s["GG"][k] + 1e-30 * np.eye(p.shape[k]))
                s["Q"].append(vecs[:, ::-1])  # descending eigenvalues
            else:
                s["Q"].append(np.eye(p.shape[k]))
        return p
    s["t"] += 1
    t, q = s["t"], s["Q"]
    gr = rot(g, q)
    s["M"] = b1 * s["M"] + (1 - b1) * gr
    s["V"] = b2 * s["V"] + (1 - b2) * gr * gr
    n = unrot(s["M"] / (np.sqrt(s["V"]) + eps), q)
    if normalize:
        n = n / (1e-30 + np.sqrt(np.mean(n * n)))
    step = lr * np.sqrt(1 - b2**t) / (1 - b1**t) if correct_bias else lr
    p = p - step * n
    p = p - lr * wd * p
    for k, o in enumerate(s["on"]):
        if o:
            s["GG"][k] = sb * s["GG"][k] + (1 - sb) * outer(g, k)
    if t % freq == 0:  # refresh: one power iteration + QR per side, V re-sorted, M re-expressed in the new basis
        m_param = unrot(s["M"], q)
        new_q = []
        for k, o in enumerate(s["on"]):
            if not o:
                new_q.append(q[k])
                continue
            est = np.diag(q[k].T @ s["GG"][k] @ q[k])
            order = np.argsort(-est, kind="stable")
            s["V"] = np.take(s["V"], order, axis=k)
            new_q.append(np.linalg.qr(s["GG"][k] @ q[k][:, order])[0])
        s["Q"] = new_q
        s["M"] = rot(m_param, new_q)
    return p


# ---------------------------------------------------------------------------------------------------------------
# harness


def make_params(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def grads_for(step, shapes=SHAPES, dtype=torch.float64, seed=100):
    """Deterministic gradients, a stripe of exact zeros in each. The FIRST gradient (the one SOAP only uses to build
    its first eigenbases) is zero outside its leading r×r block, r = min(shape): G Gᵀ of a 12×5 gradient has a
    7-dimensional null space, whose eigenvectors LAPACK may return in any rotation (MKL, under torch, and OpenBLAS,
    under NumPy, do pick different ones), and the update is not invariant to that rotation. With the block the null
    space is spanned by unit vectors in both, and the update IS invariant to their order and signs."""
    g = torch.Generator().manual_seed(seed + step)
    out = []
    for s in shapes:
        gr = torch.randn(s, generator=g, dtype=dtype)
        if step == 0:
            r = min(s) if len(s) == 2 else 1
            block = gr[tuple(slice(0, r) for _ in s)].clone()
            gr.zero_()
            gr[tuple(slice(0, r) for _ in s)] = block
        else:
            gr.view(-1)[::5] = 0.0
        out.append(gr)
    return out


def set_lr(opt, factor):
    for group in opt.param_groups:
        group["lr"] = group["base_lr"] * factor


def run(opt, params, steps=len(FACTORS)):
    history = []
    for t in range(steps):
        set_lr(opt, FACTORS[t])
        for p, gr in zip(params, grads_for(t, [tuple(q.shape) for q in params], params[0].dtype)):
            p.grad = gr
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history


def run_ref(params0, kwargs, steps=len(FACTORS)):
    ps = [p.detach().double().numpy().copy() for p in params0]
    states = [{} for _ in ps]
    ref_args = dict(betas=kwargs["betas"], shampoo_beta=kwargs["shampoo_beta"], eps=kwargs["eps"],
                    freq=kwargs["precondition_frequency"], max_dim=kwargs["max_precond_dim"],
                    precondition_1d=kwargs["precondition_1d"], normalize=kwargs["normalize_grads"],
                    correct_bias=kwargs["correct_bias"])
    history = []
    for t in range(steps):
        grads = [g.numpy() for g in grads_for(t)]
        ps = [soap_ref(p, g, s, kwargs["lr"] * FACTORS[t], kwargs["weight_decay"], **ref_args)
              for p, g, s in zip(ps, grads, states)]
        history.append([p.copy() for p in ps])
    return history


CASES = {  # both sides of every matrix; one side of the non-square ones (max_precond_dim = 7) and a preconditioned 1-D
    "two_sided": dict(lr=0.02, betas=(0.9, 0.95), shampoo_beta=-1.0, eps=1e-8, weight_decay=0.1,
                      precondition_frequency=3, max_precond_dim=10000, precondition_1d=False, normalize_grads=False,
                      correct_bias=True),
    "one_sided_1d_normalized": dict(lr=0.01, betas=(0.8, 0.99), shampoo_beta=0.9, eps=1e-8, weight_decay=0.05,
                                    precondition_frequency=3, max_precond_dim=7, precondition_1d=True,
                                    normalize_grads=True, correct_bias=False),
}


# ---------------------------------------------------------------------------------------------------------------
# (1) float64 reference, 14 steps (the first initialises; refreshes at t = 3, 6, 9, 12), lr schedule, wd > 0


@pytest.mark.parametrize("case", list(CASES))
def test_soap_matches_float64_reference(case):
    kwargs = CASES[case]
    params = make_params()
    ref = run_ref(params, kwargs)
    hist = run(SOAP(params, **kwargs), params)
    p0 = make_params()
    for t, (got, want) in enumerate(zip(hist, ref)):
        for i, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g.numpy(), w, atol=1e-12, rtol=0, err_msg=f"step {t}, param {SHAPES[i]}")
            if t == 0:  # the first step only initialises
                assert torch.equal(g, p0[i])
    # the run moved every parameter, and through refreshes (t = 13 after 14 calls)
    assert all(not np.allclose(w, p.detach().numpy()) for w, p in zip(ref[-1], p0))


def test_soap_state_layout():
    params = make_params()
    opt = SOAP(params, precondition_frequency=3)
    run(opt, params, steps=5)
    st = opt.state[params[0]]  # 12×5
    assert int(st["step"]) == 4 and st["step"].dtype == torch.int64
    assert [tuple(x.shape) for x in st["GG"]] == [(12, 12), (5, 5)] == [tuple(x.shape) for x in st["Q"]]
    for q in st["Q"]:  # orthonormal bases
        torch.testing.assert_close(q.T @ q, torch.eye(q.shape[0], dtype=q.dtype), atol=1e-12, rtol=0)
    assert [x.numel() for x in opt.state[params[3]]["Q"]] == [0]  # 1-D: plain Adam by default
    assert all(torch.is_tensor(v) or all(torch.is_tensor(x) for x in v) for s in opt.state.values() for v in s.values())


# ---------------------------------------------------------------------------------------------------------------
# (2) state_dict round trip across a refresh


def test_state_dict_round_trip_across_refresh():
    # 4 steps (init, t = 1..3, refresh at 3), save, load into a fresh optimizer on a copy of the params, 5 more
    # (refresh at t = 6) == 9 uninterrupted steps, bit for bit (float32, as in training; torch.save like a checkpoint).
    kwargs = dict(lr=0.01, betas=(0.9, 0.95), weight_decay=0.1, precondition_frequency=3, precondition_1d=True)
    pa = make_params(dtype=torch.float32)
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    oa = SOAP(pa, **kwargs)
    run(oa, pa, steps=4)
    buf = io.BytesIO()
    torch.save(oa.state_dict(), buf)
    for p, q in zip(pa, pb):
        q.data.copy_(p.data)

    def more(opt, ps):
        for t in range(4, 9):
            set_lr(opt, FACTORS[t])
            for p, gr in zip(ps, grads_for(t, SHAPES, torch.float32)):
                p.grad = gr
            opt.step()

    more(oa, pa)
    ob = SOAP(pb, **kwargs)
    buf.seek(0)
    ob.load_state_dict(torch.load(buf, weights_only=True))
    assert int(ob.state[pb[0]]["step"]) == 3
    more(ob, pb)
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
    for a, b in zip(pa, pb):
        sa, sb = oa.state[a], ob.state[b]
        assert int(sa["step"]) == int(sb["step"]) == 8
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[key], sb[key])
        for key in ("GG", "Q"):
            assert all(torch.equal(x, y) for x, y in zip(sa[key], sb[key]))


# ---------------------------------------------------------------------------------------------------------------
# (3) FLOPs


def counted_step(opt):
    with FlopCounterMode(display=False) as fc:
        opt.step()
    ops = {str(op).split(".")[-1] for op in fc.get_flop_counts().get("Global", {})}
    assert ops <= MATMUL_OPS, ops
    return fc.get_total_flops()


def test_projection_flops():
    m, n = 12, 5
    x = torch.randn(m, n)
    qs = [torch.linalg.qr(torch.randn(m, m)).Q, torch.linalg.qr(torch.randn(n, n)).Q]
    with FlopCounterMode(display=False) as fc:
        y = project(x, qs)
    assert fc.get_total_flops() == 2 * m * m * n + 2 * m * n * n
    torch.testing.assert_close(y, qs[0].T @ x @ qs[1])


def test_last_step_flops_match_flop_counter():
    # init, projection and refresh steps (freq 3): "matmul" is exactly what torch counts; eigh/QR by convention.
    params = make_params(dtype=torch.float32)
    opt = SOAP(params, precondition_frequency=3, precondition_1d=True)
    seen = []
    for t in range(8):
        for p, gr in zip(params, grads_for(t, SHAPES, torch.float32)):
            p.grad = gr
        counted = counted_step(opt)
        flops = opt.last_step_flops()
        assert flops["matmul"] == counted, f"step {t}"
        seen.append(flops)
    cubes = [(12**3, 5**3), (5**3, 12**3), (7**3, 7**3), (9**3,)]
    P = sum(2 * d * np.prod(s) for s in SHAPES for d in s)  # one projection of every param (1-D: 2·9·9)
    assert P == 2 * (2 * 12 * 12 * 5 + 2 * 12 * 5 * 5) + 2 * 7**3 * 2 + 2 * 9 * 9
    cube_sum = sum(sum(c) for c in cubes)
    want_matmul = [P, 3 * P, 3 * P, 5 * P + 2 * cube_sum, 3 * P, 3 * P, 5 * P + 2 * cube_sum, 3 * P]
    assert [f["matmul"] for f in seen] == want_matmul
    qr = sum(4 * d3 // 3 for c in cubes for d3 in c)
    assert [f["decomposition"] for f in seen] == [9 * cube_sum, 0, 0, qr, 0, 0, qr, 0]
    numel = sum(int(np.prod(s)) for s in SHAPES)
    assert all(f["elementwise"] > 0 for f in seen) and seen[1]["elementwise"] >= 15 * numel


def test_flops_of_one_matrix():
    # the docstring's m×n formula: per step 3·(2m²n + 2mn²); refresh + 2·(2m²n + 2mn²) + 2m³ + 2n³; init once
    m, n = 12, 5
    p = torch.nn.Parameter(torch.randn(m, n))
    opt = SOAP([p], precondition_frequency=2)
    P = 2 * m * m * n + 2 * m * n * n
    want = [(P, 9 * (m**3 + n**3)), (3 * P, 0), (5 * P + 2 * (m**3 + n**3), 4 * m**3 // 3 + 4 * n**3 // 3)]
    for t, (mm, dec) in enumerate(want):
        p.grad = torch.randn(m, n)
        assert counted_step(opt) == mm, f"step {t}"
        assert (opt.last_step_flops()["matmul"], opt.last_step_flops()["decomposition"]) == (mm, dec)


# ---------------------------------------------------------------------------------------------------------------
# arguments and the config recipe


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.0), "lr"), (dict(betas=(0.9, 1.0)), "betas"), (dict(shampoo_beta=1.0), "shampoo_beta"),
    (dict(eps=-1.0), "eps"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(precondition_frequency=0), "precondition_frequency"), (dict(precondition_frequency=2.5),
                                                                 "precondition_frequency"),
    (dict(max_precond_dim=-1), "max_precond_dim"), (dict(precondition_1d=1), "precondition_1d"),
    (dict(normalize_grads="yes"), "normalize_grads"), (dict(correct_bias=None), "correct_bias"),
])
def test_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SOAP([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_recipe(monkeypatch):
    monkeypatch.setitem(optimizers.OPTIMIZERS, "soap", "optimizers.soap:SOAP")
    check_recipe("soap", dict(lr=1e-3, betas=[0.9, 0.999], weight_decay=0.1, precondition_frequency=10.0))
    with pytest.raises(ConfigError, match="optimizer.precondition_frequency = 0"):
        check_recipe("soap", dict(precondition_frequency=0))
    with pytest.raises(ConfigError, match="optimizer.merge_dims: it is not used"):
        check_recipe("soap", dict(merge_dims=True))


# ---------------------------------------------------------------------------------------------------------------
# (4) a small GPT through build_optimizer


def test_gpt_trains(monkeypatch):
    from model import GPT, model_config

    monkeypatch.setitem(optimizers.OPTIMIZERS, "soap", "optimizers.soap:SOAP")
    torch.manual_seed(0)
    model = GPT(model_config("gpt2", "tiny", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=96))
    opt = build_optimizer(model, "soap", dict(lr=3e-3, betas=[0.95, 0.95], weight_decay=0.01,
                                              precondition_frequency=2))
    assert [g["backup_adamw"] for g in opt.param_groups] == [False, False]  # routing "none": SOAP everywhere
    assert opt.param_groups[1]["weight_decay"] == 0.0 and all(p.ndim < 2 for p in opt.param_groups[1]["params"])
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 96, (4, 16), generator=g)
    y = torch.randint(0, 96, (4, 16), generator=g)
    losses = []
    for _ in range(6):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    _, loss = model(x, y)
    losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0])  # the first step only initialises
    assert losses[-1] < losses[0] - 0.05, losses
    wte = model.transformer.wte.weight
    assert [tuple(q.shape) for q in opt.state[wte]["Q"]] == [(96, 96), (32, 32)]  # tied 96×32: both sides
    assert int(opt.state[wte]["step"]) == 5
    copy.deepcopy(opt.state_dict())
