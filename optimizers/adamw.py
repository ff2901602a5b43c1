"""AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), exactly torch.optim.AdamW.

Update, per parameter, t counting steps from 1 (pytorch/pytorch: torch/optim/adamw.py; spec §2):
    p ← p·(1 − lr·wd)                                       decoupled decay with the current (scheduled) lr
    m ← β1·m + (1−β1)·g ;   v ← β2·v + (1−β2)·g²
    p ← p − lr · (m/(1−β1ᵗ)) / (sqrt(v/(1−β2ᵗ)) + eps)

Defaults (torch's): lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2. build_optimizer() gives weight decay
to ≥2-D parameters only (matmul weights and embeddings), none to biases and norm gains, as nanoGPT's
configure_optimizers does. The step runs torch's own kernels (fused on CUDA, foreach otherwise), so its speed and
numerics are torch.optim.AdamW's. State: exp_avg, exp_avg_sq (2 tensors/param) and a step counter.
"""

from .base import NanoptimOptimizer, adamw_group_step
from .flops import ELEMENTWISE_PER_ELEMENT


class AdamW(NanoptimOptimizer):
    method = "adamw"

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid AdamW hyperparameters lr={lr} betas={betas} eps={eps} wd={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _step_main(self, groups):
        n = sum(adamw_group_step(self.state, group) for group in groups)
        return {"matmul": 0, "elementwise": ELEMENTWISE_PER_ELEMENT["adamw"] * n}
