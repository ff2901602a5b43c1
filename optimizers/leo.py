"""Leo: "Lion with Element-wise Orthogonalization-proxy" (vukrosic/leo-optimizer: llm_leo.py `class Leo`, attributed
to _xiaoiec_11128, Blueberry AI; spec §8).

Update, per parameter (u is Lion's direction from the OLD momentum):
    u ← β1·m + (1−β1)·g
    m ← β2·m + (1−β2)·g
    2-D:    r_i = ‖u[i,:]‖₂,  c_j = ‖u[:,j]‖₂
            U = u/(r + eps) + u/(c + eps)                    row-normalised plus column-normalised
            U ← U · align_const / (sqrt(mean(U²) + eps) + eps)   so that RMS(U) = align_const
    other:  U = align_const·sign(u)                          (sign(0) = 0)
    p ← p·(1 − lr·wd);   p ← p − lr·U

Defaults (the class's): lr 1e-3, betas (0.9, 0.99), weight_decay 0.01, eps 1e-8, align_const 0.2. The repo's LLM
scripts and README use align_const 0.3 (build_optimizer's default). Routing (setup_leo_optimizer): Leo for 2-D
params except the token embedding (tied to the head) and norms; the rest to AdamW(lr = 0.1·leo_lr, wd 0.1).
No matmuls; the 2-D normalisation is done per matrix. State: one buffer `exp_avg` per parameter.
"""

import torch

from .base import NanoptimOptimizer


class Leo(NanoptimOptimizer):
    method = "leo"

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.99), weight_decay: float = 0.01,
                 align_const: float = 0.2, eps: float = 1e-8):
        if lr < 0 or weight_decay < 0 or eps < 0 or align_const <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid Leo hyperparameters lr={lr} betas={betas} wd={weight_decay} "
                             f"align_const={align_const} eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      align_const=align_const, eps=eps))

    def _step_main(self, groups):
        return self._step_elementwise(groups, self._leo_update)

    @staticmethod
    def _leo_update(group, ps, grads, bufs):
        lr, wd, eps, align = group["lr"], group["weight_decay"], group["eps"], group["align_const"]
        beta1, beta2 = group["betas"]
        directions = torch._foreach_lerp(grads, bufs, beta1)
        torch._foreach_lerp_(bufs, grads, 1.0 - beta2)
        for u in directions:
            if u.ndim == 2:
                rows = torch.linalg.vector_norm(u, dim=1, keepdim=True)
                cols = torch.linalg.vector_norm(u, dim=0, keepdim=True)
                U = u / (rows + eps) + u / (cols + eps)
                rms = U.square().mean().add_(eps).sqrt_()
                u.copy_(U.mul_(align / (rms + eps)))  # reuse u's storage for the update
            else:
                u.sign_().mul_(align)
        if wd != 0:
            torch._foreach_mul_(ps, 1.0 - lr * wd)
        torch._foreach_add_(ps, directions, alpha=-lr)
