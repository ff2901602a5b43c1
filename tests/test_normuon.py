"""NorMuon (optimizers/normuon.py) against an independent float64 NumPy reference written from the update formula
(arXiv 2510.05491 as microsoft/dion implements it), plus its state_dict round trip, argument checks, FLOPs figure and
a few training steps of a small GPT from a config recipe. The optimizer is registered here with monkeypatch (the
registry line in optimizers/__init__.py is not this file's to add)."""

import copy
import math

import numpy as np
import pytest
import torch
from reference import ns_ref
from torch.utils.flop_counter import FlopCounterMode

import optimizers
from errors import ConfigError
from optimizers import build_optimizer, check_recipe
from optimizers.newton_schulz import ns_matmul_flops
from optimizers.normuon import NorMuon

SHAPES = [(12, 5), (5, 12), (7, 7), (9,)]  # tall, wide, square, 1-D (the 1-D one in a backup AdamW group)
FACTORS = [1.0, 0.5, 0.25, 0.8, 1.3, 0.6]  # an LR schedule: group["lr"] = base_lr * factor each step
BACKUP = dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.05)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(optimizers.OPTIMIZERS, "normuon", "optimizers.normuon:NorMuon")


# ---------------------------------------------------------------------------------------------------------------
# float64 reference (NumPy loops over the formula; Newton–Schulz from tests/reference.py)


def normuon_ref(p, g, s, lr, wd, mu, nesterov, beta2, eps, scaling):
    rows, cols = p.shape
    s["B"] = mu * s.get("B", np.zeros_like(p)) + (1 - mu) * g
    u = (1 - mu) * g + mu * s["B"] if nesterov else s["B"]
    O = ns_ref(u)
    v = s.get("v", np.zeros(rows))
    for i in range(rows):  # one second moment per row (neuron) of the orthogonalised update
        v[i] = beta2 * v[i] + (1 - beta2) * sum(O[i, j] ** 2 for j in range(cols)) / cols
    s["v"] = v
    N = np.empty_like(O)
    for i in range(rows):
        N[i] = O[i] / (math.sqrt(v[i]) + eps)
    N = N * (np.linalg.norm(O) / max(np.linalg.norm(N), eps))  # back to O's Frobenius norm
    k = {"spectral_norm": math.sqrt(rows / cols), "match_rms_adamw": 0.2 * math.sqrt(max(rows, cols)),
         "original": math.sqrt(max(1, rows / cols)), "none": 1.0}[scaling]
    return p * (1 - lr * wd) - lr * k * N


def adamw_ref(p, g, s, lr, wd, betas, eps):
    s["t"] = s.get("t", 0) + 1
    s["m"] = betas[0] * s.get("m", 0) + (1 - betas[0]) * g
    s["v"] = betas[1] * s.get("v", 0) + (1 - betas[1]) * g * g
    mhat, vhat = s["m"] / (1 - betas[0] ** s["t"]), s["v"] / (1 - betas[1] ** s["t"])
    return p * (1 - lr * wd) - lr * mhat / (np.sqrt(vhat) + eps)


# ---------------------------------------------------------------------------------------------------------------
# harness


def make_params(seed=0, dtype=torch.float64, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def grads_for(step, params, seed=100):
    """Deterministic gradients with exact zeros: a stripe of every tensor, and row 1 of every matrix at every step
    (so that row's second moment stays 0 and its update is 0 / (0 + eps) = 0)."""
    g = torch.Generator().manual_seed(seed + step)
    out = []
    for p in params:
        gr = torch.randn(p.shape, generator=g, dtype=p.dtype)
        gr.view(-1)[::4] = 0.0
        if gr.ndim >= 2:
            gr[1] = 0.0
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
    ps = [p.detach().double().numpy().copy() for p in params0]
    states = [{} for _ in ps]
    history = []
    for t in range(steps):
        grads = [gr.double().numpy() for gr in grads_for(t, params0)]
        ps = [fn(p, gr, s, FACTORS[t]) for fn, p, gr, s in zip(update_fns, ps, grads, states)]
        history.append([p.copy() for p in ps])
    return history


def hybrid(params):
    return [dict(params=params[:3]), dict(params=params[3:], backup_adamw=True, **BACKUP)]


# ---------------------------------------------------------------------------------------------------------------
# (1) the float64 reference, step by step


@pytest.mark.parametrize("nesterov,scaling,eps", [
    (True, "spectral_norm", 1e-8),
    (False, "match_rms_adamw", 1e-8),
    (True, "original", 0.1),  # eps comparable to √v: catches eps inside the sqrt or a clamp instead of a sum
    (False, "none", 1e-8),
])
def test_normuon_reference(nesterov, scaling, eps):
    params = make_params()
    lr, wd, mu, beta2 = 0.02, 0.1, 0.9, 0.8  # μ ≠ β2, so swapping them fails
    fn = lambda p, g, s, f: normuon_ref(p, g, s, lr * f, wd, mu, nesterov, beta2, eps, scaling)
    backup = lambda p, g, s, f: adamw_ref(p, g, s, BACKUP["lr"] * f, BACKUP["weight_decay"], BACKUP["betas"],
                                          BACKUP["eps"])
    ref = run_ref([fn] * 3 + [backup], params)
    opt = NorMuon(hybrid(params), lr=lr, momentum=mu, nesterov=nesterov, beta2=beta2, eps=eps, weight_decay=wd,
                  scaling=scaling)
    for t, (got, want) in enumerate(zip(run(opt, params), ref)):
        for i, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g.numpy(), w, atol=1e-10, rtol=0, err_msg=f"step {t}, param {SHAPES[i]}")
    for p in params[:3]:  # the state: a momentum buffer and one second moment per row
        assert opt.state[p]["variance_neuron"].shape == (p.size(0), 1)
        assert opt.state[p]["variance_neuron"][1].item() == 0.0  # the all-zero gradient row


def test_rows_are_normalised():
    # Muon's update of a tall matrix has unequal row norms (the polar factor's rows are not orthonormal); after one
    # NorMuon step with β2 = 0 (v = mean(O²) per row) every row of Ô has the same RMS, up to eps/RMS (6e-6 for the
    # smallest rows here), so with zero decay and scaling "none" every row of the step has RMS lr·‖O‖_F/√(rows·cols).
    g = torch.Generator().manual_seed(3)
    rows, cols = 24, 8
    grad = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    grad *= torch.logspace(-2, 1, rows, dtype=torch.float64)[:, None]
    p = torch.nn.Parameter(torch.zeros(rows, cols, dtype=torch.float64))
    p.grad = grad.clone()
    NorMuon([p], lr=0.1, beta2=0.0, weight_decay=0.0, scaling="none").step()
    o = ns_ref((0.05 + 0.95 * 0.05) * grad.numpy())  # the step-1 Nesterov input (1−μ)·g + μ·(1−μ)·g, μ = 0.95
    assert np.ptp(np.sqrt((o ** 2).mean(axis=1))) > 0.05  # the premise: Muon's rows differ
    np.testing.assert_allclose(p.detach().square().mean(dim=1).sqrt().numpy(),
                               0.1 * np.linalg.norm(o) / math.sqrt(rows * cols), rtol=1e-4)  # eps/RMS


def test_higher_dim_params_are_normalised_as_flattened_matrices():
    # a (4, 3, 5) parameter is orthogonalised and normalised as its (4, 15) matrix: one second moment per size(0)
    pa = make_params(shapes=[(4, 3, 5)])
    pb = [torch.nn.Parameter(pa[0].detach().reshape(4, 15).clone())]
    ha = run(NorMuon(pa, lr=0.02, weight_decay=0.1), pa)
    hb = run(NorMuon(pb, lr=0.02, weight_decay=0.1), pb)
    for a, b in zip(ha, hb):
        torch.testing.assert_close(a[0].reshape(4, 15), b[0], atol=1e-14, rtol=0)


def test_zero_gradient_moves_nothing_but_decay():
    p = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    p0 = p.detach().clone()
    opt = NorMuon([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(p.detach(), p0 * (1 - 0.1 * 0.5), atol=0, rtol=0)


def test_bfloat16_newton_schulz_normalises_in_the_parameter_dtype():
    # the CUDA default (ns_dtype "auto" = bfloat16): O comes back in bf16, the second moment and the update stay fp32
    pa = make_params(dtype=torch.float32, shapes=SHAPES[:3])
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    oa = NorMuon(pa, lr=0.02, ns_dtype="bfloat16")
    ha, hb = run(oa, pa, 3), run(NorMuon(pb, lr=0.02, ns_dtype="float32"), pb, 3)
    for a, b in zip(ha[-1], hb[-1]):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-3, rtol=0)  # moves ~3e-2, bf16 ~3e-4
    assert all(oa.state[p]["variance_neuron"].dtype == torch.float32 for p in pa)


# ---------------------------------------------------------------------------------------------------------------
# (2) state_dict round trip


class Tiny(torch.nn.Module):
    """A few named parameters shaped like a transformer's (routed like the real model's)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.names = {
            "transformer.wte.weight": (96, 16), "transformer.wpe.weight": (32, 16),
            "transformer.h.0.ln_1.weight": (16,), "transformer.h.0.attn.c_attn.weight": (48, 16),
            "transformer.h.0.attn.c_proj.weight": (16, 16), "transformer.h.0.mlp.c_fc.weight": (64, 16),
            "transformer.h.0.mlp.c_proj.weight": (16, 64), "transformer.ln_f.weight": (16,),
        }
        self.ps = torch.nn.ParameterList(torch.randn(s, generator=g) * 0.1 for s in self.names.values())

    def named_parameters(self, *args, **kwargs):
        return list(zip(self.names, self.ps))


def test_state_dict_round_trip(registered):
    m1 = Tiny()
    m2 = copy.deepcopy(m1)
    o1 = build_optimizer(m1, "normuon", {})

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
    o2 = build_optimizer(m2, "normuon", {})
    o2.load_state_dict(sd)
    own = [p for g in o2.param_groups if not g["backup_adamw"] for p in g["params"]]
    assert len(own) == 4 and all(o2.state[p]["variance_neuron"].shape == (p.size(0), 1) for p in own)
    steps(m2, o2, range(3, 6))
    for (_, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(a, b)
    for pa, pb in zip(own, (p for g in o1.param_groups if not g["backup_adamw"] for p in g["params"])):
        for key in ("momentum_buffer", "variance_neuron"):
            assert torch.equal(o2.state[pa][key], o1.state[pb][key])
    assert [g["base_lr"] for g in o2.param_groups] == [g["base_lr"] for g in o1.param_groups]


# ---------------------------------------------------------------------------------------------------------------
# (3) matrices only, argument checks


def test_refuses_vectors_in_its_own_group():
    with pytest.raises(ValueError, match="only updates matrices"):
        NorMuon([torch.nn.Parameter(torch.zeros(5))])
    with pytest.raises(ValueError, match="only updates matrices"):
        NorMuon([torch.nn.Parameter(torch.zeros(3, 5)), torch.nn.Parameter(torch.zeros(5))])
    NorMuon(hybrid(make_params()))  # in a backup AdamW group it is fine


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.0), r"^lr = 0.0 is out of range"),
    (dict(momentum=1.0), r"^momentum = 1.0"),
    (dict(beta2=1.0), r"^beta2 = 1.0"),
    (dict(beta2=-0.1), r"^beta2 = -0.1"),
    (dict(eps=0.0), r"^eps = 0.0"),
    (dict(weight_decay=-1.0), r"^weight_decay = -1.0"),
    (dict(nesterov="yes"), r"^nesterov = 'yes'"),
    (dict(ns_steps=0), r"^ns_steps = 0"),
    (dict(ns_coefficients="cubic"), r"^ns_coefficients"),
    (dict(ns_dtype="float16"), r"^ns_dtype"),
    (dict(scaling="rms_norm"), r"^scaling = 'rms_norm' is invalid; use one of: spectral_norm, match_rms_adamw"),
])
def test_constructor_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NorMuon([torch.nn.Parameter(torch.zeros(3, 5))], **kwargs)


def test_recipe_checks(registered):
    check_recipe("normuon", dict(lr=0.01, beta2=0.9, scaling="original", adamw_lr=1e-3))
    with pytest.raises(ConfigError, match=r"optimizer.beta2 = 1.5"):
        check_recipe("normuon", dict(beta2=1.5))
    with pytest.raises(ConfigError, match=r"optimizer.betas: it is not used by optimizer 'normuon'"):
        check_recipe("normuon", dict(betas=[0.9, 0.95]))
    opt = build_optimizer(Tiny(), "normuon", dict(lr=0.01))
    main, backup = opt.param_groups
    assert (main["base_lr"], backup["base_lr"], backup["betas"], backup["weight_decay"]) == (0.01, 0.01,
                                                                                              (0.95, 0.98), 0.0)
    assert len(main["params"]) == 4  # the block matrices


# ---------------------------------------------------------------------------------------------------------------
# (4) FLOPs


def test_last_step_flops_are_the_ns_matmuls(registered):
    """The matmul count is the standard iteration's exactly; with Gram NS (fp32 "auto") the count stays the
    standard one (the algorithm's cost, docs/optimizers.md §5.5) while fewer matmul FLOPs run."""
    model = Tiny()
    opt = build_optimizer(model, "normuon", {"ns_method": "standard"})
    mats = [(48, 16), (16, 16), (64, 16), (16, 64)]  # the block matrices ("hidden" routing)
    for _, p in model.named_parameters():
        p.grad = torch.randn_like(p)
    with FlopCounterMode(display=False) as fc:
        opt.step()
    flops = opt.last_step_flops()
    assert flops["matmul"] == sum(ns_matmul_flops(m, n, 5) for m, n in mats) == fc.get_total_flops()
    gram = build_optimizer(model, "normuon", {})
    with FlopCounterMode(display=False) as fc:
        gram.step()
    assert gram.last_step_flops()["matmul"] == flops["matmul"]
    assert fc.get_total_flops() == sum(ns_matmul_flops(m, n, 5, "gram" if max(m, n) > 1.5 * min(m, n) else
                                                       "standard") for m, n in mats)
    numel = sum(m * n for m, n in mats)
    backup = sum(p.numel() for g in opt.param_groups if g["backup_adamw"] for p in g["params"])
    assert flops["elementwise"] > NorMuon.flops_per_element * numel + 15 * backup  # plus NS elementwise


# ---------------------------------------------------------------------------------------------------------------
# (5) training from a config recipe


def test_trains_a_small_gpt_from_a_config(registered):
    from model import GPT, model_config

    torch.manual_seed(0)
    model = GPT(model_config("gpt2", "tiny", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=96))
    opt = build_optimizer(model, "normuon", dict(lr=0.02, weight_decay=0.01, adamw_lr=3e-3))
    matrices = [p for g in opt.param_groups if not g["backup_adamw"] for p in g["params"]]
    assert len(matrices) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj of both blocks
    before = [p.detach().clone() for p in matrices]
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 96, (4, 16), generator=g)
    y = torch.roll(x, -1, dims=1)
    losses = []
    for _ in range(6):
        _, loss = model(x, y)
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.2, losses  # 4.57 → 3.91 on this machine
    assert all(not torch.equal(a, p.detach()) and "variance_neuron" in opt.state[p] for a, p in zip(before, matrices))


# ---------------------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes (NS split across ranks, state on every rank) = 1 process on the same global batch


# fp32 NS: the test is about splitting the work across ranks; with "auto" (bf16 on CPUs with bf16 matrix units) the
# batched and the split NS round differently and the runs drift apart beyond fp32 tolerance
# the standard iteration: with Gram NS (fp32 "auto") the ranks' fp32-level gradient differences reach ~1e-5 in
# the weights, this test's tolerance (docs/optimizers.md §5.7); the split NS itself is exact either way
# (tests/test_fsdp.py ns_exact, tests/test_newton_schulz.py)
DDP_SETTINGS = dict(lr=0.05, adamw_lr=3e-3, beta2=0.9, ns_dtype="float32", ns_method="standard")
DDP_STEPS = 4


def _ddp_model():
    from model import GPT, model_config

    torch.manual_seed(0)
    return GPT(model_config("gpt2", "tiny", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=96))


def _ddp_train(model, opt, rank, world_size, ddp=None):
    """The same 4 sequences every step; rank r takes 2 of them, one process takes both halves as two micro-batches
    (loss/2 each), which gives the same averaged gradients."""
    g = torch.Generator().manual_seed(1000)
    x = torch.randint(0, 96, (4, 16), generator=g)
    y = torch.roll(x, -1, dims=1)
    for _ in range(DDP_STEPS):
        if world_size == 1:
            for half in range(2):
                (model(x[2 * half:2 * half + 2], y[2 * half:2 * half + 2])[1] / 2).backward()
        else:
            ddp(x[2 * rank:2 * rank + 2], y[2 * rank:2 * rank + 2])[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _ddp_worker(rank, world_size, tmp):
    import torch.distributed as dist

    import optimizers.newton_schulz as ns_module

    torch.set_num_threads(1)
    optimizers.OPTIMIZERS["normuon"] = "optimizers.normuon:NorMuon"  # this spawned process only
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size)
    count = [0]
    original = ns_module.newton_schulz

    def counting(X, *args, **kwargs):  # how many matrices this rank orthogonalises
        count[0] += X.shape[0] if X.ndim == 3 else 1
        return original(X, *args, **kwargs)

    ns_module.newton_schulz = counting
    model = _ddp_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = build_optimizer(ddp, "normuon", DDP_SETTINGS)
    _ddp_train(model, opt, rank, world_size, ddp)
    torch.save(dict(params={n: p.detach() for n, p in model.named_parameters()}, opt=opt.state_dict(),
                    ns_count=count[0]), f"{tmp}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes: 10-30 s on 2 shared cores
def test_ddp_two_ranks_equal_one_process(registered, tmp_path):
    import os

    import torch.multiprocessing as mp

    model = _ddp_model()
    opt = build_optimizer(model, "normuon", DDP_SETTINGS)
    p0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _ddp_train(model, opt, 0, 1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    n_mat = len(opt.param_groups[0]["params"])
    counts = [r["ns_count"] for r in ranks]
    assert sum(counts) == n_mat * DDP_STEPS and all(0 < c < sum(counts) for c in counts)  # the NS work is split
    for n, p in model.named_parameters():
        assert torch.equal(ranks[0]["params"][n], ranks[1]["params"][n]), n  # every rank got every NS output
        torch.testing.assert_close(ranks[0]["params"][n], p.detach(), atol=1e-5, rtol=1e-5, msg=n)
        assert not torch.equal(p.detach(), p0[n]), n
    # each rank's state is complete (every parameter, both buffers), and equal to the other rank's
    one = opt.state_dict()["state"]
    for r in ranks:
        assert r["opt"]["state"].keys() == one.keys()
        for i, st in one.items():
            for key, value in st.items():
                torch.testing.assert_close(r["opt"]["state"][i][key], value, atol=1e-5, rtol=1e-5)
                assert torch.equal(r["opt"]["state"][i][key], ranks[0]["opt"]["state"][i][key])
