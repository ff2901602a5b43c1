"""Leo: "Lion with Element-wise Orthogonalization-proxy" (vukrosic/leo-optimizer: llm_leo.py `class Leo`, attributed
to _xiaoiec_11128, Blueberry AI; docs/optimizers.md §8).

Update, per parameter (u is Lion's direction from the OLD momentum):
    u ← β1·m + (1−β1)·g
    m ← β2·m + (1−β2)·g
    2-D:    r_i = ‖u[i,:]‖₂,  c_j = ‖u[:,j]‖₂
            U = u/(r + eps) + u/(c + eps)                    row-normalised plus column-normalised
            U ← U · align_const / (sqrt(mean(U²) + eps) + eps)   so that RMS(U) = align_const
    other:  U = align_const·sign(u)                          (sign(0) = 0)
    p ← p·(1 − lr·wd);   p ← p − lr·U

No matmuls; the 2-D normalisation is done per matrix, in two temporaries reused from step to step (no allocation;
each matrix's passes run while it is in cache). Routing (the repo's setup_leo_optimizer): Leo for 2-D params
except the token embedding (tied to the head) and norms; the rest to AdamW(lr = 0.1·leo_lr, wd 0.1).
State: one buffer `exp_avg` per parameter.
"""

import torch

from .base import HybridOptimizer, check_betas, check_number


class Leo(HybridOptimizer):
    """Leo, with the class defaults of vukrosic/leo-optimizer except align_const (0.3, its LLM scripts' and README's
    value; the class default is 0.2).

    Args:
        lr: learning rate (1e-3).
        betas: (β1, β2) as in Lion: direction interpolation, momentum decay (0.9, 0.99).
        weight_decay: decoupled weight decay, multiplied by the current lr (0.01).
        align_const: the RMS of the 2-D updates and the magnitude of the 1-D ones (0.3).
        eps: added to the row/column norms and the RMS (1e-8).
    """

    flops_per_element = 19  # Lion's 11 plus row and column norms, two divisions, RMS and rescale
    default_routing = "leo"
    default_backup_adamw = dict(lr_ratio=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.01, align_const: float = 0.3, eps: float = 1e-8):
        check_number("lr", lr, 0, lo_open=True)
        check_betas("betas", betas)
        check_number("weight_decay", weight_decay, 0)
        check_number("align_const", align_const, 0, lo_open=True)
        check_number("eps", eps, 0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                                      align_const=align_const, eps=eps))

    def _step(self, groups):
        for group, params, grads, exp_avgs in self._groups_with_grads(groups, "exp_avg"):
            lr, wd, eps, align = group["lr"], group["weight_decay"], group["eps"], group["align_const"]
            beta1, beta2 = group["betas"]
            for p, g, m in zip(params, grads, exp_avgs):  # one matrix at a time, in two reused temporaries
                u = torch.lerp(g, m, beta1, out=self._scratch(g, 0))  # β1·m + (1−β1)·g, from the OLD m
                m.lerp_(g, 1.0 - beta2)
                U = leo_direction(u, self._scratch(u, 1), align, eps)
                if wd != 0:
                    p.mul_(1.0 - lr * wd)
                p.add_(U, alpha=-lr)


def leo_direction(u: torch.Tensor, scratch: torch.Tensor, align: float, eps: float) -> torch.Tensor:
    """Leo's update U from Lion's direction u, computed in u's storage (scratch: a temporary of u's shape)."""
    if u.ndim != 2:
        return u.sign_().mul_(align)
    rows = torch.linalg.vector_norm(u, dim=1, keepdim=True).add_(eps)
    cols = torch.linalg.vector_norm(u, dim=0, keepdim=True).add_(eps)
    by_rows = torch.div(u, rows, out=scratch)
    U = u.div_(cols).add_(by_rows)  # u/(c + eps) + u/(r + eps)
    rms = torch.mul(U, U, out=scratch).mean().add_(eps).sqrt_()
    return U.mul_(align / (rms + eps))
