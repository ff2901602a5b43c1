"""Signum: sign of the EMA momentum (Bernstein et al. 2018, "signSGD: Compressed Optimisation for Non-Convex
Problems", arXiv 1802.04434), with decoupled weight decay.

Update, per parameter (the EMA form of optax.signum; spec §4):
    m ← β·m + (1−β)·g
    p ← p·(1 − lr·wd)
    p ← p − lr·sign(m)                    sign(0) = 0

This is the LionMuon paper's "Signum (P=∞)" (its `signum_fixed` runs: LionMuon with β1 = β2 = 0.9 and no Muon
steps). The SGD-style buffer m ← μm + g gives the same direction (sign is scale-invariant). Defaults: lr 1e-4
(the paper's 124M ηL), momentum β 0.9 (optax), weight_decay 0.0. State: one buffer `exp_avg`. foreach ops.
"""

import torch

from .base import NanoptimOptimizer


class Signum(NanoptimOptimizer):
    method = "signum"

    def __init__(self, params, lr: float = 1e-4, momentum: float = 0.9, weight_decay: float = 0.0):
        if lr < 0 or weight_decay < 0 or not 0.0 <= momentum < 1.0:
            raise ValueError(f"invalid Signum hyperparameters lr={lr} momentum={momentum} wd={weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _step_main(self, groups):
        return self._step_elementwise(groups, lambda group, params, grads, exp_avgs: signum_foreach(
            params, grads, exp_avgs, group["lr"], group["weight_decay"], group["momentum"]))


def signum_foreach(params, grads, exp_avgs, lr, wd, beta):
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta)
    if wd != 0:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    update = torch._foreach_sign(exp_avgs)
    torch._foreach_add_(params, update, alpha=-lr)

