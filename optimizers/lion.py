"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675).

Update, per parameter (google/automl: lion/lion_pytorch.py, identical to lucidrains/lion-pytorch; spec §3):
    p ← p·(1 − lr·wd)                     decoupled decay first, with the current (scheduled) lr
    c ← β1·m + (1−β1)·g                   interpolation with the OLD momentum
    p ← p − lr·sign(c)                    sign(0) = 0 (torch.sign)
    m ← β2·m + (1−β2)·g                   momentum updated after the step

Defaults (the paper's and both reference codes'): lr 1e-4, betas (0.9, 0.99), weight_decay 0.0. State: one buffer
`exp_avg` per parameter (half of AdamW's). The step is written with torch._foreach_* ops: one kernel per operation
over all tensors of a group, not a Python loop of small kernels. With compilation on (the default on CUDA, see
base.py), the same update is one torch.compile'd function: each tensor's whole update becomes one fused kernel that
reads p, g, m once and writes p, m once (20 bytes per fp32 element instead of the foreach version's ~52).
"""

import torch

from .base import NanoptimOptimizer
from .flops import ELEMENTWISE_PER_ELEMENT


class Lion(NanoptimOptimizer):
    method = "lion"

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        if lr < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Lion hyperparameters lr={lr} betas={betas} wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    def _step_main(self, groups):
        n = 0
        for group in groups:
            params, grads, (exp_avgs,) = self._collect(group, ("exp_avg",))
            if not params:
                continue
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            lion_update(params, grads, exp_avgs, lr, wd, beta1, beta2, self._compiled(params[0]))
            n += sum(p.numel() for p in params)
        return {"matmul": 0, "elementwise": ELEMENTWISE_PER_ELEMENT["lion"] * n}


def lion_foreach(params, grads, exp_avgs, lr, wd, beta1, beta2):
    """The Lion update on lists of tensors (shared with LionMuon's Lion steps)."""
    if wd != 0:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    update = torch._foreach_lerp(grads, exp_avgs, beta1)  # g + β1·(m − g) = β1·m + (1−β1)·g
    torch._foreach_sign_(update)
    torch._foreach_add_(params, update, alpha=-lr)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta2)  # m + (1−β2)·(g − m)


def _lion_loop(params, grads, exp_avgs, lr: float, wd: float, beta1: float, beta2: float):
    # written per tensor for torch.compile, which fuses each tensor's four operations into one kernel
    for p, g, m in zip(params, grads, exp_avgs):
        update = torch.lerp(g, m, beta1).sign_()
        p.mul_(1.0 - lr * wd).sub_(update * lr)
        m.lerp_(g, 1.0 - beta2)


_lion_compiled = None


def lion_update(params, grads, exp_avgs, lr, wd, beta1, beta2, compiled: bool):
    """Lion on lists of tensors: the compiled fused kernels, or lion_foreach."""
    global _lion_compiled
    if not compiled:
        return lion_foreach(params, grads, exp_avgs, lr, wd, beta1, beta2)
    if _lion_compiled is None:
        # floats stay symbolic (torch._dynamo.config.specialize_float is False), so a new scheduled lr each step
        # reuses the compiled code; one compilation per distinct list of tensor shapes (per param group)
        _lion_compiled = torch.compile(_lion_loop, fullgraph=True, dynamic=False)
    _lion_compiled(params, grads, exp_avgs, float(lr), float(wd), float(beta1), float(beta2))
