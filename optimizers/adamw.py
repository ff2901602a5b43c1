"""AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), exactly torch.optim.AdamW.

Update, per parameter, t counting steps from 1 (pytorch/pytorch: torch/optim/adamw.py; docs/optimizers.md §2):
    p ← p·(1 − lr·wd)                                       decoupled decay with the current (scheduled) lr
    m ← β1·m + (1−β1)·g ;   v ← β2·v + (1−β2)·g²
    p ← p − lr · (m/(1−β1ᵗ)) / (sqrt(v/(1−β2ᵗ)) + eps)

The step runs torch's own fused kernel (on CUDA and on CPU; foreach on other devices), so its speed and
numerics are torch.optim.AdamW(fused=True)'s (the foreach kernels round a few entries differently, by an ulp).
Routing "none" (the default) gives weight decay to ≥2-D parameters only (matmul weights and embeddings), none to
biases and norm gains, as nanoGPT's configure_optimizers does. State: exp_avg, exp_avg_sq
(2 tensors per parameter) and a step counter.
"""

from .base import ADAMW_FLOPS_PER_ELEMENT, HybridOptimizer, adamw_group_step, check_adamw_args


class AdamW(HybridOptimizer):
    """AdamW with torch's defaults.

    Args:
        lr: learning rate (torch's default 1e-3).
        betas: (β1, β2), the decay rates of the first and second moment (0.9, 0.999).
        eps: added to sqrt(v̂) in the denominator (1e-8).
        weight_decay: decoupled weight decay, multiplied by the current lr (1e-2).
    """

    flops_per_element = ADAMW_FLOPS_PER_ELEMENT

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        check_adamw_args(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _step(self, groups):
        for group in groups:
            adamw_group_step(self.state, group)
