"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675).

Update, per parameter (google/automl: lion/lion_pytorch.py, identical to lucidrains/lion-pytorch;
docs/optimizers.md §3):
    p ← p·(1 − lr·wd)                     decoupled decay first, with the current (scheduled) lr
    c ← β1·m + (1−β1)·g                   interpolation with the OLD momentum
    p ← p − lr·sign(c)                    sign(0) = 0 (torch.sign)
    m ← β2·m + (1−β2)·g                   momentum updated after the step

`lion_update` computes these in the reference codes' multiply-add order (`m·β1 + g·(1−β1)`,
`m.mul_(β2).add_(g, alpha=1−β2)`), so it equals lucidrains/lion-pytorch bit for bit in fp32; it uses
torch._foreach_* ops, one kernel per operation over all tensors of a group on CUDA. On CPU the same arithmetic runs
in one pass per element (sign_kernels.py: 20 bytes of memory traffic per element instead of ~68, the same bits),
or, without a C compiler, lion_update over cache-sized slices (base.in_chunks). State: one
buffer `exp_avg` per parameter (half of AdamW's). With a routing rule (e.g. routing = "lionmuon"), embeddings and
norms go to a backup AdamW: the LionMuon paper's "Lion" runs, without their single Muon step at t = 0
(docs/optimizers.md §3).
"""

import torch

from . import sign_kernels
from .base import HybridOptimizer, check_betas, check_number, in_chunks


class Lion(HybridOptimizer):
    """Lion with the paper's and both reference codes' defaults.

    Args:
        lr: learning rate; every entry moves by lr per step (1e-4).
        betas: (β1, β2): β1 interpolates the momentum and the gradient for the update direction, β2 is the decay of
            the stored momentum (0.9, 0.99).
        weight_decay: decoupled weight decay, multiplied by the current lr (0.0).
    """

    flops_per_element = 11  # decay, interpolation (2), sign, update, momentum (2), ... ≈ 11

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        check_number("lr", lr, 0, lo_open=True)
        check_betas("betas", betas)
        check_number("weight_decay", weight_decay, 0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    def _step(self, groups):
        for group, params, grads, exp_avgs in self._groups_with_grads(groups, "exp_avg"):
            hyper = group["lr"], group["weight_decay"], *group["betas"]
            rest = sign_kernels.lion_step(params, grads, exp_avgs, *hyper)  # CPU: one pass, the same bits
            for ps, gs, ms in in_chunks(*rest):
                lion_update(ps, gs, ms, *hyper)


def lion_update(params, grads, exp_avgs, lr, wd, beta1, beta2):
    """The Lion update on lists of tensors, in lucidrains/lion-pytorch's order of operations."""
    if wd != 0:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    update = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(update, grads, alpha=1.0 - beta1)  # β1·m + (1−β1)·g
    torch._foreach_sign_(update)
    torch._foreach_add_(params, update, alpha=-lr)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta2)  # β2·m + (1−β2)·g
