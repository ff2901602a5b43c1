"""The contract every optimizer of optimizers/ keeps with train.py and the configs (optimizers/base.py docstring):
the backup AdamW is torch's AdamW with the configured hyperparameters, the NS FLOPs figure is what the matmuls cost,
a schedule keeps the ratios between group lrs, the Newton–Schulz methods take matrices only and flatten ≥3-D
parameters to (size(0), −1), and Lion is lucidrains/lion-pytorch bit for bit. Each test fails if its feature breaks."""

import math

import numpy as np
import pytest
import torch
from reference import ns_ref
from torch.utils.flop_counter import FlopCounterMode

from errors import ConfigError
from optimizers import Lion, Muon, build_optimizer, optimizer_class

FACTORS = [1.0, 0.5, 0.25, 0.8, 1.3]  # an LR schedule: group["lr"] = base_lr * factor, one per step
# A GPT-2-like parameter set, named as model.py names them (so every routing rule sends something to each side).
GPT = {"transformer.wte.weight": (10000, 8), "transformer.wpe.weight": (16, 8), "transformer.h.0.ln_1.weight": (8,),
       "transformer.h.0.attn.c_attn.weight": (24, 8), "transformer.h.0.attn.c_proj.weight": (8, 8),
       "transformer.h.0.mlp.c_fc.weight": (32, 8), "transformer.h.0.mlp.c_proj.weight": (8, 32),
       "transformer.h.0.mlp.c_proj.bias": (8,), "transformer.ln_f.weight": (8,)}
MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm"}


class Named(torch.nn.Module):
    """Parameters of the given shapes under the given names (random, seeded)."""

    def __init__(self, shapes=GPT, dtype=torch.float32, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.names = list(shapes)
        self.ps = torch.nn.ParameterList(torch.randn(s, generator=g, dtype=dtype) * 0.5 for s in shapes.values())

    def named_parameters(self, *args, **kwargs):
        return list(zip(self.names, self.ps))


def set_grads(params, step, positive=False):
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        gr = torch.randn(p.shape, generator=g, dtype=p.dtype)
        p.grad = gr.abs() + 0.1 if positive else gr


def schedule(opt, factor):
    for group in opt.param_groups:
        group["lr"] = group["base_lr"] * factor


def counted_matmul_flops(opt):
    """FLOPs of opt.step() as torch's FlopCounterMode counts them (2 per multiply-add), all from matmul ops."""
    with FlopCounterMode(display=False) as fc:
        opt.step()
    ops = {str(op).split(".")[-1] for op in fc.get_flop_counts().get("Global", {})}
    assert ops <= MATMUL_OPS, ops
    return fc.get_total_flops()


# ---------------------------------------------------------------------------------------------------------------
# a. the backup AdamW

ADAMW = dict(adamw_lr=3.7e-3, adamw_betas=(0.71, 0.913), adamw_eps=3e-4, adamw_weight_decay=0.37)


@pytest.mark.parametrize("method,settings", [("muon", {}), ("lionmuon", {}), ("lion", dict(routing="lionmuon"))])
def test_backup_adamw_is_torch_adamw_with_the_configured_settings(method, settings):
    """Guards: build_optimizer passes adamw_lr, adamw_betas, adamw_eps and adamw_weight_decay to the backup group
    (values unlike every class default), the schedule scales its lr, and the step is torch.optim.AdamW(fused=True)
    bit for bit (the kernel it runs on CPU and CUDA); the foreach kernels round a few entries differently, by ulps."""
    model = Named()
    opt = build_optimizer(model, method, {**settings, **ADAMW})
    (backup,) = [g for g in opt.param_groups if g["backup_adamw"]]
    mine = backup["params"]
    assert len(mine) >= 3  # wte and the norms at least
    refs = {}
    for kernel in ("fused", "foreach"):
        copies = [p.detach().clone().requires_grad_() for p in mine]
        refs[kernel] = (copies, torch.optim.AdamW(
            copies, lr=ADAMW["adamw_lr"], betas=ADAMW["adamw_betas"], eps=ADAMW["adamw_eps"],
            weight_decay=ADAMW["adamw_weight_decay"], **{kernel: True}))
    for t, f in enumerate(FACTORS):
        schedule(opt, f)
        set_grads([p for _, p in model.named_parameters()], t)
        for copies, ref in refs.values():
            ref.param_groups[0]["lr"] = ADAMW["adamw_lr"] * f
            for c, p in zip(copies, mine):
                c.grad = p.grad.clone()
            ref.step()
        opt.step()
        for c, d, p in zip(refs["fused"][0], refs["foreach"][0], mine):
            assert torch.equal(p.detach(), c.detach()), f"step {t}, shape {tuple(p.shape)}"
            torch.testing.assert_close(p.detach(), d.detach(), rtol=1e-6, atol=1e-7)


def test_backup_adamw_state_moves_between_kernels():
    """Guards: an AdamW state whose step counters sit on another device than the fused kernel wants (a checkpoint
    from the foreach kernel, or one that torch's load_state_dict cast) is moved, and the steps continue exactly as
    torch.optim.AdamW(fused=True) from the same state."""
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(6, 4), (5,)]]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours = optimizer_class("adamw")(params, lr=1e-2)
    ref = torch.optim.AdamW(copies, lr=1e-2, fused=True)
    for t in range(4):
        for p, c in zip(params, copies):
            p.grad = torch.randn(p.shape, generator=g)
            c.grad = p.grad.clone()
        if t == 2:  # a state with float64 step counters (as foreach AdamW after a dtype cast would leave)
            for st in ours.state.values():
                st["step"] = st["step"].double()
        ours.step()
        ref.step()
        for p, c in zip(params, copies):
            assert torch.equal(p.detach(), c.detach()), f"step {t}"
    assert all(st["step"].dtype == torch.float32 and st["step"].device == p.device
               for p, st in zip(params, (ours.state[p] for p in params)))


# ---------------------------------------------------------------------------------------------------------------
# b. NS FLOPs


@pytest.mark.parametrize("method,settings", [("muon", {}), ("muon", dict(ns_steps=3)), ("lionmuon", dict(period=2))])
def test_ns_flops_equal_flop_counter(method, settings):
    """Guards: last_step_flops()["matmul"] is exactly the matmul FLOPs that torch counts in the step (tall, wide and
    square matrices, the ns_steps setting, batching), and LionMuon's Lion steps count (and do) no matmul."""
    model = Named()
    params = [p for _, p in model.named_parameters()]
    opt = build_optimizer(model, method, {**settings, "ns_method": "standard"})  # the iteration the formula counts
    for t in range(4):
        set_grads(params, t)
        counted = counted_matmul_flops(opt)
        assert opt.last_step_flops()["matmul"] == counted, f"step {t}"
        lion_step = method == "lionmuon" and t % 2 == 1
        assert (counted == 0) == lion_step, f"step {t}: {counted}"


# ---------------------------------------------------------------------------------------------------------------
# c. a schedule keeps the group lr ratios


def test_schedule_keeps_group_lr_ratios():
    """Guards: one schedule (group["lr"] = base_lr·f) scales LionMuon's ηM (Muon steps), ηL (Lion steps: every entry
    moves by exactly ηL·f) and the backup AdamW's lr (adamw_lr·f) alike; checked against float64 hand computations."""
    eta_m, eta_l, eta_a, (b1, b2) = 2e-3, 1e-4, 5e-4, (0.9, 0.99)
    model = Named(dtype=torch.float64)
    opt = build_optimizer(model, "lionmuon", dict(lr=eta_m, lion_lr=eta_l, betas=[b1, b2], period=2, weight_decay=0.0,
                                                  adamw_lr=eta_a, adamw_weight_decay=0.0))
    main = [p for g in opt.param_groups if not g["backup_adamw"] for p in g["params"]]
    backup = [p for g in opt.param_groups if g["backup_adamw"] for p in g["params"]]
    assert len(main) == 5 and len(backup) == 4
    backup_defaults = optimizer_class("lionmuon").default_backup_adamw
    (a1, a2), eps = backup_defaults["betas"], backup_defaults["eps"]
    M = [np.zeros(p.shape) for p in main]
    adam = [(p.detach().numpy().copy(), np.zeros(p.shape), np.zeros(p.shape)) for p in backup]
    t = 0
    for f in [1.0, 0.3, 1.7, 0.45]:  # each factor for one Muon and one Lion step
        for _ in range(2):
            schedule(opt, f)
            set_grads(main + backup, t, positive=True)  # positive gradients: every Lion direction is +1
            before = [p.detach().numpy().copy() for p in main]
            opt.step()
            for i, (p, p0) in enumerate(zip(main, before)):
                g = p.grad.numpy()
                c = b1 * M[i] + (1 - b1) * g
                if t % 2 == 0:  # Muon step
                    want = -eta_m * f * 0.2 * math.sqrt(max(p.shape)) * ns_ref(c)
                else:
                    want = np.full(p.shape, -eta_l * f)
                np.testing.assert_allclose(p.detach().numpy() - p0, want, rtol=0, atol=1e-14,
                                           err_msg=f"step {t}, {tuple(p.shape)}")
                M[i] = b2 * M[i] + (1 - b2) * g
            for i, (p, (x, m, v)) in enumerate(zip(backup, adam)):
                g = p.grad.numpy()
                m[:] = a1 * m + (1 - a1) * g
                v[:] = a2 * v + (1 - a2) * g * g
                x -= eta_a * f * (m / (1 - a1 ** (t + 1))) / (np.sqrt(v / (1 - a2 ** (t + 1))) + eps)
                np.testing.assert_allclose(p.detach().numpy(), x, rtol=0, atol=1e-13, err_msg=f"step {t}, backup {i}")
            t += 1


# ---------------------------------------------------------------------------------------------------------------
# d. matrices only


@pytest.mark.parametrize("name", ["muon", "olion", "lionmuon", "signmuon"])
def test_ns_optimizers_refuse_vectors_in_their_own_group(name):
    """Guards: the Newton–Schulz optimizers reject a 1-D parameter outside a backup group (ValueError from the
    constructor, ConfigError from build_optimizer with routing "none"), and accept it in a backup AdamW group."""
    cls = optimizer_class(name)
    w, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(4))
    with pytest.raises(ValueError, match="matrices"):
        cls([w, b])
    with pytest.raises(ValueError, match="matrices"):
        cls([dict(params=[w]), dict(params=[b], weight_decay=0.0)])
    with pytest.raises(ConfigError):
        build_optimizer(Named(), name, dict(routing="none"))
    cls([dict(params=[w]), dict(params=[b], backup_adamw=True, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)])


# ---------------------------------------------------------------------------------------------------------------
# e. 3-D and 4-D parameters


@pytest.mark.parametrize("scaling", ["original", "match_rms_adamw"])
def test_muon_flattens_higher_dim_params(scaling):
    """Guards: a ≥3-D parameter is orthogonalised as (size(0), −1) (newton_schulz.matrix_shape): Muon's update on it
    is exactly its update on the reshaped matrix, scale factor included, and last_step_flops counts that shape."""
    g = torch.Generator().manual_seed(7)
    nd = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(4, 3, 5), (6, 2, 3, 3), (20, 2, 2)]]
    flat = [torch.nn.Parameter(p.detach().reshape(p.size(0), -1).clone()) for p in nd]  # (4, 15), (6, 18), (20, 4)
    a, b = (Muon(ps, lr=0.02, weight_decay=0.1, scaling=scaling, ns_method="standard") for ps in (nd, flat))
    for t, f in enumerate(FACTORS[:3]):
        schedule(a, f)
        schedule(b, f)
        for p, q in zip(nd, flat):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.reshape(q.shape).clone()
        counted = counted_matmul_flops(a)
        b.step()
        for p, q in zip(nd, flat):
            assert torch.equal(p.detach().reshape(q.shape), q.detach()), f"step {t}, {tuple(p.shape)}"
        assert a.last_step_flops() == b.last_step_flops()
        assert a.last_step_flops()["matmul"] == counted > 0


# ---------------------------------------------------------------------------------------------------------------
# f. Lion = lucidrains/lion-pytorch


def lucidrains_step(p, grad, exp_avg, lr, wd, beta1, beta2):
    """lucidrains/lion-pytorch (lion_pytorch.py `update_fn`), in its order of operations."""
    p.data.mul_(1 - lr * wd)
    update = exp_avg.clone().mul_(beta1).add(grad, alpha=1 - beta1).sign_()
    p.add_(update, alpha=-lr)
    exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


def lerp_step(p, grad, exp_avg, lr, wd, beta1, beta2):
    """The same update written with lerp: equal in exact arithmetic, not in fp32 rounding."""
    p.data.mul_(1 - lr * wd)
    p.add_(grad.lerp(exp_avg, beta1).sign_(), alpha=-lr)
    exp_avg.lerp_(grad, 1 - beta2)


def test_lion_equals_lucidrains_bit_for_bit():
    """Guards: Lion's update (decay, interpolation, sign, momentum) in lucidrains' order of operations: params and
    momentum equal lucidrains/lion-pytorch bit for bit in fp32 for 500 steps (varying lr, wd > 0, tall/wide/square/
    1-D). The lerp form, equal in exact arithmetic, fails this (asserted, so the comparison has teeth)."""
    steps, wd, (b1, b2) = 500, 0.1, (0.9, 0.99)
    g = torch.Generator().manual_seed(11)
    # Sizes: a rounding difference flips a sign only where β1·m + (1−β1)·g is within an ulp of 0, so the lerp form
    # first moves a parameter differently at step 15 here; with 64×32-sized tensors it took 574–1035 steps (3 seeds).
    shapes = [(256, 128), (128, 256), (192, 192), (1000,)]
    ours = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    theirs, lerped = ([p.detach().clone() for p in ours] for _ in range(2))
    m_theirs, m_lerped = ([torch.zeros_like(p) for p in ours] for _ in range(2))
    opt = Lion(ours, lr=1e-3, betas=(b1, b2), weight_decay=wd)
    lerp_differs = None
    for t in range(steps):
        lr = 1e-3 * (0.2 + torch.rand((), generator=g).item())
        opt.param_groups[0]["lr"] = lr
        for p, q, r, mq, mr in zip(ours, theirs, lerped, m_theirs, m_lerped):
            p.grad = torch.randn(p.shape, generator=g)
            lucidrains_step(q, p.grad, mq, lr, wd, b1, b2)
            lerp_step(r, p.grad, mr, lr, wd, b1, b2)
        opt.step()
        for p, q, mq in zip(ours, theirs, m_theirs):
            assert torch.equal(p.detach(), q), f"step {t}, {tuple(p.shape)}"
            assert torch.equal(opt.state[p]["exp_avg"], mq), f"step {t}, momentum of {tuple(p.shape)}"
        if lerp_differs is None and any(not torch.equal(r, q) for r, q in zip(lerped, theirs)):
            lerp_differs = t
    assert lerp_differs is not None, "the lerp form never differed: the bit-for-bit comparison has no teeth"
