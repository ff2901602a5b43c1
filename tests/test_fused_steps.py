"""Issue 17, the CPU fast paths: each new step is the old one bit for bit in fp32.

Lion, Signum, Leo and LionMuon/SignMuon's Lion steps now run on cache-sized slices (base.in_chunks) or in reused
temporaries (Leo), and Newton–Schulz writes into reused buffers. The old code of each (optimizers/*.py before the
change) is copied below verbatim as the reference: every test runs several steps (varying lr, wd > 0, gradients with
exact zeros, tensors larger than a chunk with ragged tails, small ones grouped, a non-contiguous gradient) and asserts
torch.equal on parameters and state after every step.
"""

import math
import shutil

import pytest
import torch

import optimizers.base as base
import optimizers.sign_kernels as sign_kernels
from optimizers import Leo, Lion, LionMuon, SignMuon, Signum
from optimizers.base import in_chunks
from optimizers.newton_schulz import POLAR_EXPRESS, newton_schulz, orthogonalize, resolve_dtype

LRS = [1e-2, 5e-3, 2.5e-3, 8e-3, 1.3e-2, 7e-3]  # one lr per step (a schedule)
# (1031, 1019) = 1,050,589 elements: larger than CPU_CHUNK (2^20), with a tail that is no multiple of the vector width
SHAPES = [(1031, 1019), (64, 48), (48, 64), (37,), (5, 3, 7), (40, 40)]


# ---------------------------------------------------------------------------------------------------------------
# the old code, verbatim


def old_lion(params, grads, exp_avgs, lr, wd, beta1, beta2):  # optimizers/lion.py lion_update
    if wd != 0:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    update = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(update, grads, alpha=1.0 - beta1)  # β1·m + (1−β1)·g
    torch._foreach_sign_(update)
    torch._foreach_add_(params, update, alpha=-lr)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta2)  # β2·m + (1−β2)·g


def old_signum(params, grads, exp_avgs, lr, wd, momentum):  # optimizers/signum.py Signum._step
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - momentum)
    if wd != 0:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    torch._foreach_add_(params, torch._foreach_sign(exp_avgs), alpha=-lr)


def old_lionmuon_lion_step(ps, grads, bufs, lr, wd, beta1, beta2):  # optimizers/lionmuon.py, a Lion step
    directions = torch._foreach_lerp(grads, bufs, beta1)
    torch._foreach_lerp_(bufs, grads, 1.0 - beta2)
    if wd != 0:
        torch._foreach_mul_(ps, 1.0 - lr * wd)
    torch._foreach_sign_(directions)
    torch._foreach_add_(ps, directions, alpha=-lr)


def old_leo(params, grads, exp_avgs, lr, wd, beta1, beta2, align, eps):  # optimizers/leo.py Leo._step
    directions = torch._foreach_lerp(grads, exp_avgs, beta1)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta2)
    for u in directions:
        if u.ndim == 2:
            rows = torch.linalg.vector_norm(u, dim=1, keepdim=True)
            cols = torch.linalg.vector_norm(u, dim=0, keepdim=True)
            U = u / (rows + eps) + u / (cols + eps)
            rms = U.square().mean().add_(eps).sqrt_()
            u.copy_(U.mul_(align / (rms + eps)))
        else:
            u.sign_().mul_(align)
    if wd != 0:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    torch._foreach_add_(params, directions, alpha=-lr)


def old_newton_schulz(G, steps=5, coefficients="kellerjordan", eps=1e-7, dtype=None):  # optimizers/newton_schulz.py
    schedule = [(3.4445, -4.7750, 2.0315)] * steps if coefficients == "kellerjordan" else \
        [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)]
    scale = 1.0 if coefficients == "kellerjordan" else 1.01
    X = G.to(dtype) if dtype is not None else G
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * scale + eps)
    if X.ndim == 2:
        for a, b, c in schedule:
            A = X @ X.mT
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, B, X, beta=a)
    else:
        X = X.reshape(-1, X.size(-2), X.size(-1)) if X.ndim > 3 else X
        for a, b, c in schedule:
            A = torch.bmm(X, X.mT)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a)
        X = X.reshape(*G.shape[:-2], X.size(-2), X.size(-1))
    return X.mT if transposed else X


# ---------------------------------------------------------------------------------------------------------------
# harness


def make(shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in shapes]


def grads(params, t):
    g = torch.Generator().manual_seed(100 + t)
    out = []
    for p in params:
        gr = torch.randn(p.shape, generator=g) * 1e-2
        gr.view(-1)[::5] = 0.0  # exact zeros: sign(β1·m + (1−β1)·0) and sign(0) both occur
        if p.ndim == 2 and p.size(0) == p.size(1):
            gr = gr.mT  # a non-contiguous gradient (in_chunks keeps it whole)
        out.append(gr)
    return out


def compare(opt, params, old_step, steps=len(LRS), cancel=None):
    """Run `opt` and `old_step(params, grads, buffers, lr)` on copies side by side; equal bit for bit every step.

    cancel=β: from step 1 on, every third gradient entry is −β/(1−β)·m, so that β·m + (1−β)·g is 0 up to rounding
    there and its sign is decided by the rounding: a rewrite of the update that rounds differently (the lerp form of
    Lion's interpolation, say) flips signs at once instead of once in millions of entries."""
    ref = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for t in range(steps):
        lr = LRS[t % len(LRS)]
        for group in opt.param_groups:
            group["lr"] = lr
        gs = grads(params, t)
        if cancel is not None and t > 0:
            for gr, m in zip(gs, bufs):
                flat = gr.reshape(-1).clone()  # in logical order (one gradient is a transposed view)
                flat[1::3] = (m * (-cancel / (1 - cancel))).reshape(-1)[1::3]
                gr.copy_(flat.view(gr.shape))
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()
        old_step(ref, gs, bufs, lr)
        for p, q, m in zip(params, ref, bufs):
            assert torch.equal(p.detach(), q), f"step {t}, {tuple(p.shape)}"
            assert torch.equal(opt.state[p]["exp_avg"], m), f"step {t}, state of {tuple(p.shape)}"


@pytest.fixture(params=["c_kernel", "torch_slices", "torch_tiny_slices"])
def chunk(request, monkeypatch):
    """The paths of a sign step on CPU: the one-pass C kernel (sign_kernels.py; split into ranges of ~100 elements
    over 3 threads, so ranges start and end inside tensors), and the torch ops that run without a compiler, on the
    real slices and on 1000-element ones (every tensor but the smallest sliced, many batch boundaries)."""
    if request.param == "c_kernel":
        if not sign_kernels.available():
            assert shutil.which("cc") is None and shutil.which("gcc") is None, sign_kernels.status()
            pytest.skip(f"no C compiler here: {sign_kernels.status()}")
        monkeypatch.setattr(sign_kernels, "MIN_PARALLEL", 100)
        monkeypatch.setattr(sign_kernels, "_threads", lambda: 3)
    else:
        monkeypatch.setattr(sign_kernels, "_run", lambda fn, params, grads, bufs, scalars: (params, grads, bufs))
    if request.param == "torch_tiny_slices":
        monkeypatch.setattr(base, "CPU_CHUNK", 1000)
    return request.param


# ---------------------------------------------------------------------------------------------------------------
# the optimizers


def test_lion_bit_exact(chunk):
    params = make()
    opt = Lion(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.3)
    compare(opt, params, lambda p, g, m, lr: old_lion(p, g, m, lr, 0.3, 0.9, 0.99), cancel=0.9)


def test_signum_bit_exact(chunk):
    params = make()
    opt = Signum(params, lr=1e-2, momentum=0.8, weight_decay=0.3)
    compare(opt, params, lambda p, g, m, lr: old_signum(p, g, m, lr, 0.3, 0.8), cancel=0.8)


@pytest.mark.parametrize("cls,kwargs,betas", [
    (LionMuon, dict(betas=(0.9, 0.99)), (0.9, 0.99)),
    (SignMuon, dict(momentum=0.85), (0.85, 0.85)),
])
def test_lionmuon_lion_steps_bit_exact(chunk, cls, kwargs, betas):
    params = make([s for s in SHAPES if len(s) >= 2])  # matrices only
    opt = cls(params, lr=1e-2, lion_lr=2e-3, period=math.inf, weight_decay=0.2, **kwargs)
    compare(opt, params, lambda p, g, m, lr: old_lionmuon_lion_step(p, g, m, lr * 0.2, 0.2, *betas), cancel=betas[0])


SPECIAL = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45, -1e-45, 1e-38, 3e38, -3e38, 1.0, -1.0]


@pytest.mark.parametrize("kind", ["lion", "signum", "dual_ema"])
def test_sign_kernels_on_special_values(kind):
    """±0, NaN, ±inf, denormals and near-overflow values in p, g and m, in every combination: the C kernel gives the
    torch ops' bits (NaN payloads included), with and without weight decay."""
    if not sign_kernels.available():
        pytest.skip(f"no C kernel: {sign_kernels.status()}")
    v = torch.tensor(SPECIAL)
    n = len(SPECIAL)
    p, g, m = (x.reshape(-1).contiguous() for x in torch.meshgrid(v, v, v, indexing="ij"))  # n³ combinations
    p, g, m = p.repeat(3), g.repeat(3), m.repeat(3)  # > one vector width of each, and a ragged tail
    assert p.numel() == 3 * n ** 3
    for wd in (0.0, 0.1):
        for lr in (1e-3, 0.7):
            new = [p.clone()], [g.clone()], [m.clone()]
            old = [p.clone()], [g.clone()], [m.clone()]
            if kind == "lion":
                rest = sign_kernels.lion_step(*new, lr, wd, 0.9, 0.99)
                old_lion(*old, lr, wd, 0.9, 0.99)
            elif kind == "signum":
                rest = sign_kernels.signum_step(*new, lr, wd, 0.8)
                old_signum(*old, lr, wd, 0.8)
            else:
                rest = sign_kernels.dual_ema_sign_step(*new, lr, wd, 0.9, 0.99)
                old_lionmuon_lion_step(*old, lr, wd, 0.9, 0.99)
            assert rest == ([], [], [])
            for a, b in zip(new, old):
                assert torch.equal(a[0].view(torch.int32), b[0].view(torch.int32)), (kind, wd, lr)


def test_sign_kernels_take_what_they_can():
    """fp32 contiguous CPU triples go to the kernel; a transposed gradient or another dtype comes back for the torch
    code, in order."""
    if not sign_kernels.available():
        pytest.skip(f"no C kernel: {sign_kernels.status()}")
    a, b, c = torch.randn(8, 8), torch.randn(4, 4, dtype=torch.float64), torch.randn(6, 5)
    ps = [a.clone(), b.clone(), c.clone(), torch.randn(7)]
    gs = [torch.randn(8, 8).mT, torch.randn(4, 4, dtype=torch.float64), torch.randn(6, 5), torch.randn(7)]
    ms = [torch.zeros_like(x) for x in ps]
    rest = sign_kernels.lion_step(ps, gs, ms, 1e-2, 0.0, 0.9, 0.99)
    assert [x is y for x, y in zip(rest[0], ps[:2])] == [True, True] and len(rest[0]) == 2
    assert torch.equal(ps[0], a) and torch.equal(ps[1], b)  # untouched: the caller steps them
    assert not torch.equal(ps[2], c)  # stepped by the kernel


def test_leo_bit_exact():
    params = make()
    opt = Leo(params, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05, align_const=0.3)
    compare(opt, params, lambda p, g, m, lr: old_leo(p, g, m, lr, 0.05, 0.9, 0.99, 0.3, 1e-8))


def test_lion_bit_exact_over_more_steps(chunk):
    # a longer run: momentum built up over 12 steps, parameters decayed 12 times
    params = make([(1031, 1019), (37,)], seed=3)
    opt = Lion(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    compare(opt, params, lambda p, g, m, lr: old_lion(p, g, m, lr, 0.1, 0.9, 0.99), steps=12, cancel=0.9)


# ---------------------------------------------------------------------------------------------------------------
# Newton–Schulz with reused buffers


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(48, 96), (96, 48), (40, 40), (3, 24, 40), (3, 40, 24), (2, 2, 16, 8)])
@pytest.mark.parametrize("coefficients", ["kellerjordan", "polar_express"])
def test_newton_schulz_bit_exact(dtype, shape, coefficients):
    G = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).to(dtype)
    new, old = newton_schulz(G, 5, coefficients), old_newton_schulz(G, 5, coefficients)
    assert new.shape == old.shape and new.dtype == old.dtype
    assert torch.equal(new, old)
    assert torch.equal(G, torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).to(dtype))  # G kept


def test_orthogonalize_bit_exact():
    # orthogonalize() stacks same-shape matrices and runs one batched NS per shape: the old batched NS (a tall matrix
    # iterated through its transposed view gives the bits of its transposed copy here)
    g = torch.Generator().manual_seed(9)
    mats = [torch.randn(s, generator=g) for s in [(16, 40), (40, 16), (16, 40)]]
    old = old_newton_schulz(torch.stack([mats[0], mats[1].mT, mats[2]]), 5, dtype=torch.float32)
    new = orthogonalize(mats, 5, "kellerjordan", "float32", ns_method="standard")  # "auto" would run Gram NS here
    assert all(torch.equal(n, o) for n, o in zip(new, [old[0], old[1].mT, old[2]]))


def test_auto_dtype_rule(monkeypatch):
    x32, x64 = torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.float64)
    import optimizers.newton_schulz as ns
    monkeypatch.setattr(ns, "cpu_has_bf16_matmul", lambda: True)
    assert (resolve_dtype("auto", x32), resolve_dtype("auto", x64)) == (torch.bfloat16, torch.float64)
    monkeypatch.setattr(ns, "cpu_has_bf16_matmul", lambda: False)
    assert (resolve_dtype("auto", x32), resolve_dtype("auto", x64)) == (torch.float32, torch.float64)
    assert resolve_dtype("float32", x32) == torch.float32 and resolve_dtype("bfloat16", x64) == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------------
# in_chunks


def test_in_chunks_covers_every_element_once():
    ts = [torch.zeros(s) for s in [(2500,), (10, 30), (999,), (1000,), (3,), (7, 300)]]
    ts.append(torch.zeros(40, 50).mT)  # non-contiguous: kept whole
    others = [torch.zeros_like(t) for t in ts]
    seen = 0
    for a, b in in_chunks(ts, others, chunk=1000):
        assert len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b))
        assert sum(x.numel() for x in a) <= 1000 or (len(a) == 1 and not a[0].is_contiguous())
        for x in a:
            x.add_(1)
            seen += x.numel()
    assert seen == sum(t.numel() for t in ts)
    assert all(torch.equal(t, torch.ones_like(t)) for t in ts)
    assert list(in_chunks([], [])) == []  # nothing to step: no batch (a foreach op refuses empty lists)
