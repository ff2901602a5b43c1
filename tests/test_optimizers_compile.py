"""The torch.compile'd paths (on by default on CUDA) compute the same update as the eager foreach paths.

Runs on the CPU (inductor's C++ backend), so the fused kernels used on GPUs are checked without one. The compile
itself takes most of this file's time.
"""

import pytest
import torch

from optimizers import Lion, LionMuon, Muon, Signum

SHAPES = [(12, 5), (5, 12), (7, 7)]


@pytest.mark.parametrize("cls,kwargs", [
    (Lion, dict(lr=0.01, weight_decay=0.1)),
    (Signum, dict(lr=0.01, weight_decay=0.1)),
    (LionMuon, dict(lr=0.01, lion_lr=1e-3, period=2, weight_decay=0.1, ns_dtype="float32")),
    (Muon, dict(lr=0.02, weight_decay=0.1, ns_dtype="float32")),
])
def test_compiled_equals_eager(cls, kwargs):
    torch.manual_seed(0)
    pa = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    initial = [p.detach().clone() for p in pa]
    eager, compiled = cls(pa, **kwargs), cls(pb, **kwargs)
    eager.compile, compiled.compile = False, True
    for step in range(4):
        for group in eager.param_groups + compiled.param_groups:
            group["lr"] = group["base_lr"] * (1.0 + 0.5 * step)  # a changing lr must not change the results
        for a, b in zip(pa, pb):
            g = torch.randn_like(a)
            g.view(-1)[::5] = 0.0
            a.grad, b.grad = g.clone(), g.clone()
        eager.step()
        compiled.step()
        for a, b in zip(pa, pb):
            torch.testing.assert_close(b.detach(), a.detach(), atol=1e-6, rtol=0, msg=f"step {step}")
    assert all(not torch.equal(b.detach(), p0) for b, p0 in zip(pb, initial))  # the compiled steps did update
