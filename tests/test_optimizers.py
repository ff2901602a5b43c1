"""Every optimizer against an independent float64 NumPy reference written from its update formula, plus the spec's
identities, torch.optim.Muon parity, state memory, state_dict round trips, FLOPs and config validation."""

import copy
import math

import numpy as np
import pytest
import torch
from reference import ns_ref

from errors import ConfigError
from optimizers import (
    OPTIMIZERS,
    AdamW,
    Leo,
    Lion,
    LionMuon,
    Muon,
    OLion,
    SignMuon,
    Signum,
    build_optimizer,
    check_recipe,
    optimizer_class,
)
from optimizers.build import constructor_arguments
from optimizers.newton_schulz import ns_matmul_flops

SHAPES = [(12, 5), (5, 12), (7, 7), (9,)]  # tall, wide, square, 1-D
FACTORS = [1.0, 0.5, 0.25, 0.8, 1.3]  # an LR schedule: group["lr"] = base_lr * factor each step


# ---------------------------------------------------------------------------------------------------------------
# float64 references (NumPy, from the formulas in the spec; Newton–Schulz: tests/reference.py)


def adamw_ref(p, g, s, lr, wd, betas=(0.9, 0.999), eps=1e-8):
    s["t"] = s.get("t", 0) + 1
    s["m"] = betas[0] * s.get("m", 0) + (1 - betas[0]) * g
    s["v"] = betas[1] * s.get("v", 0) + (1 - betas[1]) * g * g
    mhat, vhat = s["m"] / (1 - betas[0] ** s["t"]), s["v"] / (1 - betas[1] ** s["t"])
    return p * (1 - lr * wd) - lr * mhat / (np.sqrt(vhat) + eps)


def lion_ref(p, g, s, lr, wd, betas):
    m = s.get("m", np.zeros_like(p))
    c = betas[0] * m + (1 - betas[0]) * g
    p = p * (1 - lr * wd) - lr * np.sign(c)
    s["m"] = betas[1] * m + (1 - betas[1]) * g
    return p


def signum_ref(p, g, s, lr, wd, beta):
    s["m"] = beta * s.get("m", np.zeros_like(p)) + (1 - beta) * g
    return p * (1 - lr * wd) - lr * np.sign(s["m"])


def muon_ref(p, g, s, lr, wd, mu, nesterov, scaling):
    s["B"] = mu * s.get("B", np.zeros_like(p)) + (1 - mu) * g
    u = (1 - mu) * g + mu * s["B"] if nesterov else s["B"]
    rows, cols = p.shape
    k = math.sqrt(max(1, rows / cols)) if scaling == "original" else 0.2 * math.sqrt(max(rows, cols))
    return p * (1 - lr * wd) - lr * k * ns_ref(u)


def olion_ref(p, g, s, lr, wd, betas, eps=1e-8):
    s["M"] = betas[1] * s.get("M", np.zeros_like(p)) + (1 - betas[1]) * g
    u = (1 - betas[0]) * g + betas[0] * s["M"]
    S = np.sign(ns_ref(u))
    m, n = p.shape
    gamma = math.sqrt(min(m, n)) / (np.linalg.norm(S) + eps) * 0.2 * math.sqrt(max(m, n))
    return p * (1 - lr * wd) - lr * gamma * S


def lionmuon_ref(p, g, s, lr, wd, betas, period, lion_ratio, t):
    M = s.get("M", np.zeros_like(p))
    c = betas[0] * M + (1 - betas[0]) * g
    if not math.isinf(period) and t % int(period) == 0:
        p = p * (1 - lr * wd) - lr * 0.2 * math.sqrt(max(p.shape)) * ns_ref(c)
    else:
        lr_l = lr * lion_ratio
        p = p * (1 - lr_l * wd) - lr_l * np.sign(c)
    s["M"] = betas[1] * M + (1 - betas[1]) * g
    return p


def leo_ref(p, g, s, lr, wd, betas, align, eps=1e-8):
    m = s.get("m", np.zeros_like(p))
    u = betas[0] * m + (1 - betas[0]) * g
    s["m"] = betas[1] * m + (1 - betas[1]) * g
    if p.ndim == 2:
        r = np.linalg.norm(u, axis=1, keepdims=True)
        c = np.linalg.norm(u, axis=0, keepdims=True)
        U = u / (r + eps) + u / (c + eps)
        U = U * align / (np.sqrt(np.mean(U * U) + eps) + eps)
    else:
        U = align * np.sign(u)
    return p * (1 - lr * wd) - lr * U


# ---------------------------------------------------------------------------------------------------------------
# harness


def make_params(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def grads_for(step, params, seed=100):
    """Deterministic gradients with exact zeros (a stripe of every tensor), so sign(0) = 0 is exercised."""
    g = torch.Generator().manual_seed(seed + step)
    out = []
    for p in params:
        gr = torch.randn(p.shape, generator=g, dtype=p.dtype)
        gr.view(-1)[::4] = 0.0
        out.append(gr)
    return out


def run(opt, params, steps=len(FACTORS)):
    history = []
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * FACTORS[t]
        for p, gr in zip(params, grads_for(t, params)):
            p.grad = gr.clone()
        opt.step()
        history.append([p.detach().clone() for p in params])
    return history


def run_ref(update_fns, params0, steps=len(FACTORS)):
    """update_fns[i](p, g, state, factor, t) -> new p, for each param; returns per-step float64 snapshots."""
    ps = [p.detach().double().numpy().copy() for p in params0]
    states = [{} for _ in ps]
    history = []
    for t in range(steps):
        grads = [gr.double().numpy() for gr in grads_for(t, params0)]
        ps = [fn(p, gr, s, FACTORS[t], t) for fn, p, gr, s in zip(update_fns, ps, grads, states)]
        history.append([p.copy() for p in ps])
    return history


def assert_history(hist, ref, atol=1e-11):
    for t, (got, want) in enumerate(zip(hist, ref)):
        for i, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g.numpy(), w, atol=atol, rtol=0, err_msg=f"step {t}, param {SHAPES[i]}")


def hybrid(params):
    """Matrices in the main group, 1-D params in a backup AdamW group with its own lr, betas and wd."""
    return [dict(params=params[:3]),
            dict(params=params[3:], backup_adamw=True, lr=3e-3, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.05)]


def backup_ref(p, g, s, f, t):
    return adamw_ref(p, g, s, 3e-3 * f, 0.05, (0.8, 0.95))


# ---------------------------------------------------------------------------------------------------------------
# float64 reference tests, one per optimizer (several steps, tall/wide/square/1-D, weight decay, schedule, zeros)


def test_adamw_reference():
    params = make_params()
    ref = run_ref([lambda p, g, s, f, t: adamw_ref(p, g, s, 1e-2 * f, 0.1, (0.9, 0.99), 1e-8)] * 4, params)
    assert_history(run(AdamW(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1), params), ref)


def test_lion_reference():
    params = make_params()
    ref = run_ref([lambda p, g, s, f, t: lion_ref(p, g, s, 1e-2 * f, 0.3, (0.9, 0.99))] * 4, params)
    assert_history(run(Lion(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.3), params), ref)


def test_signum_reference():
    params = make_params()
    ref = run_ref([lambda p, g, s, f, t: signum_ref(p, g, s, 1e-2 * f, 0.3, 0.8)] * 4, params)
    assert_history(run(Signum(params, lr=1e-2, momentum=0.8, weight_decay=0.3), params), ref)


@pytest.mark.parametrize("nesterov,scaling", [(True, "original"), (False, "match_rms_adamw")])
def test_muon_reference(nesterov, scaling):
    params = make_params()
    fn = lambda p, g, s, f, t: muon_ref(p, g, s, 0.02 * f, 0.1, 0.9, nesterov, scaling)
    ref = run_ref([fn] * 3 + [backup_ref], params)
    opt = Muon(hybrid(params), lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.1, scaling=scaling)
    assert_history(run(opt, params), ref)


def test_olion_reference():
    params = make_params()
    fn = lambda p, g, s, f, t: olion_ref(p, g, s, 0.01 * f, 0.1, (0.95, 0.98))
    ref = run_ref([fn] * 3 + [backup_ref], params)
    assert_history(run(OLion(hybrid(params), lr=0.01, betas=(0.95, 0.98), weight_decay=0.1), params), ref)


@pytest.mark.parametrize("period", [1, 2, 3, math.inf])
def test_lionmuon_reference(period):
    params = make_params()
    fn = lambda p, g, s, f, t: lionmuon_ref(p, g, s, 0.01 * f, 0.1, (0.9, 0.99), period, 0.05, t)
    ref = run_ref([fn] * 3 + [backup_ref], params)
    opt = LionMuon(hybrid(params), lr=0.01, lion_lr=5e-4, betas=(0.9, 0.99), period=period, weight_decay=0.1)
    assert_history(run(opt, params), ref)


def test_signmuon_reference():
    params = make_params()
    fn = lambda p, g, s, f, t: lionmuon_ref(p, g, s, 0.01 * f, 0.1, (0.85, 0.85), 2, 0.1, t)
    ref = run_ref([fn] * 3 + [backup_ref], params)
    opt = SignMuon(hybrid(params), lr=0.01, lion_lr=1e-3, momentum=0.85, period=2, weight_decay=0.1)
    assert_history(run(opt, params), ref)


def test_leo_reference():
    params = make_params()
    ref = run_ref([lambda p, g, s, f, t: leo_ref(p, g, s, 1e-2 * f, 0.05, (0.9, 0.99), 0.3)] * 4, params)
    assert_history(run(Leo(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05, align_const=0.3), params), ref)


@pytest.mark.parametrize("name", ["lion", "signum", "olion", "lionmuon", "signmuon", "leo"])
def test_sign_of_zero_is_zero(name):
    # Zero gradient and zero state: every sign-based direction is sign(0) = 0, so with wd = 0 nothing moves.
    # (An implementation with sign(0) = ±1 moves every entry by lr.)
    p = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    p0 = p.detach().clone()
    kwargs = dict(weight_decay=0.0, lr=0.1)
    if name in ("lionmuon", "signmuon"):
        kwargs.update(period=math.inf)  # Lion/Signum steps only
    opt = OPTIMIZERS[name]([p], **kwargs)
    p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(p.detach(), p0, atol=0, rtol=0)
    # a single non-zero gradient entry moves only that entry under Lion/Signum
    if name in ("lion", "signum", "lionmuon", "signmuon"):
        p.grad = torch.zeros_like(p)
        p.grad[2, 3] = 1e-3
        opt.step()
        moved = (p.detach() != p0)
        assert moved.sum() == 1 and moved[2, 3]


# ---------------------------------------------------------------------------------------------------------------
# identities (docs/optimizers.md §9.10)


def matrices(seed=0):
    return make_params(seed)[:3]


def run_pair(opt_a, pa, opt_b, pb, steps=len(FACTORS), atol=1e-11):
    ha, hb = run(opt_a, pa, steps), run(opt_b, pb, steps)
    for t, (a, b) in enumerate(zip(ha, hb)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=atol, rtol=0, msg=f"step {t}")


def test_lionmuon_p1_equal_betas_is_paper_muon():
    # LionMuon(P=1, β1=β2=β) = EMA-momentum Muon without Nesterov, scaled 0.2·√max (the paper's "Muon").
    pa, pb = matrices(), matrices()
    run_pair(LionMuon(pa, lr=0.01, betas=(0.9, 0.9), period=1, weight_decay=0.1), pa,
             Muon(pb, lr=0.01, momentum=0.9, nesterov=False, scaling="match_rms_adamw", weight_decay=0.1), pb)


def test_signmuon_p1_is_paper_muon():
    pa, pb = matrices(), matrices()
    run_pair(SignMuon(pa, lr=0.01, momentum=0.9, period=1, weight_decay=0.1), pa,
             Muon(pb, lr=0.01, momentum=0.9, nesterov=False, scaling="match_rms_adamw", weight_decay=0.1), pb)


def test_lionmuon_p_inf_is_lion():
    pa, pb = matrices(), matrices()
    run_pair(LionMuon(pa, lr=0.01, lion_lr=3e-3, betas=(0.9, 0.99), period=math.inf, weight_decay=0.2), pa,
             Lion(pb, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.2), pb, atol=1e-15)


def test_signmuon_p_inf_is_signum():
    pa, pb = matrices(), matrices()
    run_pair(SignMuon(pa, lr=0.01, lion_lr=3e-3, momentum=0.9, period=math.inf, weight_decay=0.2), pa,
             Signum(pb, lr=3e-3, momentum=0.9, weight_decay=0.2), pb, atol=1e-15)


def test_first_step_muon_quirk():
    # P = inf with first_step_muon: step 0 is a Muon step (the paper code's P = 1e7), then Lion forever.
    pa, pb = matrices(), matrices()
    a = LionMuon(pa, lr=0.01, lion_lr=1e-3, period=math.inf, first_step_muon=True)
    b = LionMuon(pb, lr=0.01, lion_lr=1e-3, period=10**7)
    run_pair(a, pa, b, pb, atol=0)
    assert a.param_groups[0]["step"] == len(FACTORS)
    pc = matrices()
    c = LionMuon(pc, lr=0.01, lion_lr=1e-3, period=math.inf)
    hc = run(c, pc, 1)
    assert not torch.equal(hc[0][0], run(LionMuon(matrices(), lr=0.01, lion_lr=1e-3, period=math.inf,
                                                  first_step_muon=True), matrices(), 1)[0][0])


def test_nesterov_muon_is_lion_direction():
    # Muon-Nesterov(μ): U = (1−μ)g + μ·B_t = μ²·B_{t−1} + (1−μ²)·g, the Lion interpolation with (β1, β2) = (μ², μ);
    # so Nesterov Muon (0.2·√max scaling) = LionMuon(P=1, betas=(μ², μ)).
    mu = 0.95
    pa, pb = matrices(), matrices()
    run_pair(Muon(pa, lr=0.01, momentum=mu, nesterov=True, scaling="match_rms_adamw", weight_decay=0.1), pa,
             LionMuon(pb, lr=0.01, betas=(mu * mu, mu), period=1, weight_decay=0.1), pb, atol=1e-10)


def test_olion_runs_newton_schulz():
    # From zero state the first OLion direction is ∝ g, so the update is −lr·0.2·sign(NS(g)). Pick g where
    # sign(NS(g)) ≠ sign(g) somewhere: an implementation that skips NS (like OLion's nanoGPT code) fails here.
    g = np.array([[1.0, 2.0, 0.3], [0.5, -1.0, 3.0], [0.2, 0.1, 0.4]])
    expected = np.sign(ns_ref(g))
    assert (expected != np.sign(g)).any()  # the premise of the test
    p = torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))
    opt = OLion([p], lr=0.1, weight_decay=0.0)
    p.grad = torch.tensor(g)
    opt.step()
    np.testing.assert_allclose(p.detach().numpy(), -0.1 * 0.2 * expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# torch.optim.Muon parity


@pytest.mark.parametrize("scaling,adjust", [("original", None), ("match_rms_adamw", "match_rms_adamw")])
def test_muon_matches_torch_muon(scaling, adjust):
    g = torch.Generator().manual_seed(5)
    shapes = [(48, 32), (32, 48), (40, 40), (32, 48)]
    pa = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    ours = Muon(pa, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, ns_dtype="bfloat16", scaling=scaling)
    ref = torch.optim.Muon(pb, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, adjust_lr_fn=adjust)
    for t in range(4):
        for a, b in zip(pa, pb):
            gr = torch.randn(a.shape, generator=g)
            a.grad, b.grad = gr.clone(), gr.clone()
        ours.step()
        ref.step()
        for a, b in zip(pa, pb):
            torch.testing.assert_close(a.detach(), b.detach(), atol=2e-4, rtol=0, msg=f"step {t}")


# ---------------------------------------------------------------------------------------------------------------
# state: memory, round trip through state_dict, FLOPs


class Tiny(torch.nn.Module):
    """A few named parameters shaped like a transformer's (names routed like the real model's)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.p = torch.nn.ParameterDict()
        self.names = {
            "transformer.wte.weight": (10050, 16), "transformer.wpe.weight": (32, 16),
            "transformer.h.0.ln_1.weight": (16,), "transformer.h.0.attn.c_attn.weight": (48, 16),
            "transformer.h.0.attn.c_proj.weight": (16, 16), "transformer.h.0.mlp.c_fc.weight": (64, 16),
            "transformer.h.0.mlp.c_proj.weight": (16, 64), "transformer.ln_f.weight": (16,),
        }
        for i, (_n, s) in enumerate(self.names.items()):
            self.p[str(i)] = torch.nn.Parameter(torch.randn(s, generator=g) * 0.1)

    def named_parameters(self, *args, **kwargs):
        return [(n, self.p[str(i)]) for i, n in enumerate(self.names)]


@pytest.mark.parametrize("name", ["lion", "signum", "muon", "olion", "lionmuon", "signmuon", "leo"])
def test_state_memory_one_fp32_buffer(name):
    model = Tiny()
    opt = build_optimizer(model, name, dict())
    for _, p in model.named_parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    for group in opt.param_groups:
        for p in group["params"]:
            tensors = [v for v in opt.state[p].values() if torch.is_tensor(v)]
            nbytes = sum(v.numel() * v.element_size() for v in tensors)
            if not group["backup_adamw"]:
                assert nbytes == 4 * p.numel(), (name, p.shape, nbytes)  # exactly one fp32 buffer
            else:  # backup AdamW: exp_avg, exp_avg_sq and a 4-byte step counter
                assert nbytes == 8 * p.numel() + 4
    assert sum(len(g["params"]) for g in opt.param_groups if not g["backup_adamw"]) >= 4


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip(name):
    # 3 steps, save, load into a fresh optimizer on a copy of the params, 3 more steps == 6 uninterrupted steps,
    # bit for bit. With P = 2, an odd step count means the resumed LionMuon must start with a Lion step.
    m1 = Tiny()
    m2 = copy.deepcopy(m1)
    o1 = build_optimizer(m1, name, {})

    def steps(model, opt, ts):
        for t in ts:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * FACTORS[t % len(FACTORS)]
            g = torch.Generator().manual_seed(t)
            for _, p in model.named_parameters():
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()

    steps(m1, o1, range(3))
    sd = copy.deepcopy(o1.state_dict())
    m2.load_state_dict(m1.state_dict())
    steps(m1, o1, range(3, 6))
    o2 = build_optimizer(m2, name, {})
    o2.load_state_dict(sd)
    if name in ("lionmuon", "signmuon"):
        assert o2.param_groups[0]["step"] == 3 and not o2.is_muon_step()
    steps(m2, o2, range(3, 6))
    for (_, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(a, b)
    assert [g["base_lr"] for g in o2.param_groups] == [g["base_lr"] for g in o1.param_groups]


def test_last_step_flops():
    model = Tiny()
    mats = [(48, 16), (16, 16), (64, 16), (16, 64), (32, 16)]  # lionmuon routes wpe (32×16) to the matrices too
    opt = build_optimizer(model, "lionmuon", dict(period=2))
    seen = []
    for _t in range(4):
        for _, p in model.named_parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        seen.append(opt.last_step_flops())
    ns = sum(ns_matmul_flops(m, n, 5) for m, n in mats)
    assert [f["matmul"] for f in seen] == [ns, 0, ns, 0]  # NS charged on Muon steps only
    numel = sum(p.numel() for _, p in model.named_parameters())
    assert all(f["elementwise"] >= 8 * numel for f in seen)
    adam = build_optimizer(model, "adamw", dict())
    adam.step()
    assert adam.last_step_flops() == {"matmul": 0, "elementwise": 15 * numel}


def test_schedule_keeps_group_ratios():
    # The schedule multiplies every group's base_lr; LionMuon's ηL is a ratio of the group lr, so it follows.
    model = Tiny()
    opt = build_optimizer(model, "lionmuon", dict(lr=2e-3, lion_lr=1e-4, adamw_lr=5e-4))
    main, backup = opt.param_groups
    assert (main["base_lr"], backup["base_lr"], backup["backup_adamw"]) == (2e-3, 5e-4, True)
    assert main["lion_lr_ratio"] == pytest.approx(0.05)


# ---------------------------------------------------------------------------------------------------------------
# config


def defaults(name):
    """{argument: default} of an optimizer's constructor: the single source of its hyperparameters."""
    return {k: d for k, (_, d) in constructor_arguments(optimizer_class(name)).items()}


def test_default_recipe_is_adamw_and_valid():
    check_recipe("adamw", {})
    assert defaults("adamw")["lr"] == 1e-3


def test_pinned_method_defaults():
    # docs/optimizers.md §9.12
    lm = defaults("lionmuon")
    assert (lm["betas"], lm["period"], lm["lr"], lm["lion_lr"], lm["weight_decay"]) == ((0.9, 0.99), 2, 1e-3, 5e-5, 0.1)
    assert LionMuon.default_backup_adamw["betas"] == (0.8, 0.999) and LionMuon.default_routing == "lionmuon"
    assert defaults("lion")["betas"] == (0.9, 0.99)
    assert defaults("olion")["betas"] == (0.95, 0.98)
    assert defaults("leo")["align_const"] == 0.3 and defaults("leo")["betas"] == (0.9, 0.99)
    leo = build_optimizer(Tiny(), "leo", dict(lr=0.01))
    assert [g["lr"] for g in leo.param_groups if g["backup_adamw"]] == [pytest.approx(1e-3)]  # 0.1 × lr
    mu = defaults("muon")
    assert (mu["momentum"], mu["ns_steps"], mu["ns_coefficients"]) == (0.95, 5, "kellerjordan")


@pytest.mark.parametrize("name,settings,match", [
    ("adamw2", {}, "unknown. Use one of: adamw, lion"),
    ("lion", dict(lr=-1e-4), r"optimizer.lr = -0.0001 is out of range"),
    ("lion", dict(betas=[0.9, 1.0]), r"optimizer.betas .* \[0, 1\)"),
    ("lion", dict(betas=[0.9]), r"optimizer.betas"),
    ("lionmuon", dict(period=0.5), r"optimizer.period = 0.5 .* integer >= 1 or inf"),
    ("lionmuon", dict(period=2.5), r"optimizer.period = 2.5"),
    ("muon", dict(ns_steps=0), r"optimizer.ns_steps = 0"),
    ("muon", dict(ns_coefficients="cubic"), r"kellerjordan, polar_express"),
    ("muon", dict(scaling="moonlight"), r"original, match_rms_adamw"),
    ("muon", dict(betas=[0.9, 0.99]), r"optimizer.betas: it is not used by optimizer 'muon'"),
    ("signmuon", dict(momentum=1.2), r"optimizer.momentum = 1.2"),
    ("olion", dict(routing="everything"), r"none, hidden, lionmuon, olion, leo"),
    ("leo", dict(align_const=0.0), r"optimizer.align_const = 0.0"),
    ("muon", dict(nesterov="yes"), r"optimizer.nesterov .* bool"),
    ("muon", dict(to_backup=[""]), r"non-empty"),
    ("muon", dict(routing="none"), r"updates only matrices"),
    ("lion", dict(adamw_lr=1e-3), r"routing = 'none' sends no parameter to a backup AdamW"),
    ("muon", dict(adamw_lr=0.0), r"optimizer.adamw_lr = 0.0 is out of range"),
    ("muon", dict(adamw_betas=[0.9, 1.5]), r"optimizer.adamw_betas"),
    ("lionmuon", dict(lion_lr=None), r"optimizer.lion_lr = None"),
])
def test_recipe_errors(name, settings, match):
    with pytest.raises(ConfigError, match=match) as e:
        check_recipe(name, settings)
    assert "\n" not in str(e.value)


def test_period_inf_and_integer_float_are_valid():
    check_recipe("lionmuon", dict(period=math.inf))
    check_recipe("signmuon", dict(period=5.0))


def test_routing_override_that_matches_nothing():
    with pytest.raises(ConfigError, match="matches no parameter"):
        build_optimizer(Tiny(), "muon", dict(to_backup=["nonexistent"]))
    with pytest.raises(ConfigError, match="1-D parameter"):
        build_optimizer(Tiny(), "muon", dict(to_matrix=["ln_f"]))
