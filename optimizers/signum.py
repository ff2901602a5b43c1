"""Signum: sign of the EMA momentum (Bernstein et al. 2018, "signSGD: Compressed Optimisation for Non-Convex
Problems", arXiv 1802.04434), with decoupled weight decay.

Update, per parameter (the EMA form of optax.signum; docs/optimizers.md §4):
    m ← β·m + (1−β)·g
    p ← p·(1 − lr·wd)
    p ← p − lr·sign(m)                    sign(0) = 0

The SGD-style buffer m ← μm + g gives the same direction (sign is scale-invariant). This is the LionMuon paper's
"Signum (P=∞)" rule, but not exactly its `signum_fixed` runs: those ran the LionMuon code with β1 = β2 = 0.9 and
P = 1e7, so they took ONE Muon step at t = 0 (at the warm-up lr). `signmuon` with period = inf and
first_step_muon = true reproduces the runs; this class takes no Muon step. State: one buffer `exp_avg`.
"""

import torch

from . import sign_kernels
from .base import HybridOptimizer, check_number, in_chunks


class Signum(HybridOptimizer):
    """Signum.

    Args:
        lr: learning rate; every entry moves by lr per step (1e-4, the LionMuon paper's 124M Signum ηL).
        momentum: β, the decay of the EMA momentum (0.9, optax's default).
        weight_decay: decoupled weight decay, multiplied by the current lr (0.0).
    """

    flops_per_element = 8  # momentum lerp, decay, sign, update ≈ 8

    def __init__(self, params, lr: float = 1e-4, momentum: float = 0.9, weight_decay: float = 0.0):
        check_number("lr", lr, 0, lo_open=True)
        check_number("momentum", momentum, 0, 1)
        check_number("weight_decay", weight_decay, 0)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _step(self, groups):
        for group, params, grads, exp_avgs in self._groups_with_grads(groups, "exp_avg"):
            lr, wd = group["lr"], group["weight_decay"]
            rest = sign_kernels.signum_step(params, grads, exp_avgs, lr, wd, group["momentum"])  # CPU: one pass
            for ps, gs, ms in in_chunks(*rest):  # the others (CUDA, no compiler): cache-sized slices on CPU
                torch._foreach_lerp_(ms, gs, 1.0 - group["momentum"])
                if wd != 0:
                    torch._foreach_mul_(ps, 1.0 - lr * wd)
                torch._foreach_add_(ps, torch._foreach_sign(ms), alpha=-lr)
