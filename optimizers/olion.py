"""OLion: Lion-style momentum → Newton–Schulz → sign → RMS alignment (Wang, Shen, Zhang 2026, arXiv 2602.01105).

Update, per matrix W (m×n) (kv-wang/OLion: SIT/olion.py `olion_update` and Llama/OLion_FSDP2.py;
docs/optimizers.md §7.1):
    M ← β2·M + (1−β2)·g                        momentum updated FIRST (β2 = momentum_2 = 0.98)
    U ← (1−β1)·g + β1·M   if nesterov else M   (β1 = momentum = 0.95; uses the UPDATED M)
    S ← sign(NS_5(U))                          orthogonalise, THEN take the sign
    γ ← √min(m,n) / (‖S‖_F + eps) · 0.2·√max(m,n)   (use_scale + rms_scale: RMS alignment to 0.2)
    W ← W·(1 − lr·wd) − lr·γ·S
With no zeros in S, ‖S‖_F = √(mn) and γ = 0.2: every entry moves by ±0.2·lr (we count ‖S‖_F exactly from the
number of non-zeros, so γ does not carry bf16 rounding).

Reference choice: the repo's nanoGPT/OLion.py never calls its Newton–Schulz (it is Lion with a Nesterov mix,
docs/optimizers.md §7.2); we follow the paper and SIT/olion.py (NS, then sign). The test suite has an input where
sign(NS(U)) ≠ sign(U). State: one buffer `exp_avg` per matrix.
"""

import math

import torch

from .base import HybridOptimizer, check_betas, check_number
from .newton_schulz import Lerp, check_ns_args


class OLion(HybridOptimizer):
    """OLion with the OLion classes' betas, eps and NS settings, and the lr and weight decay of the repo's GPT-2
    script (nanoGPT/run.sh, train.py; the class default lr 0.02 is for its other settings). Its backup AdamW there
    shares the lr, with betas (0.9, 0.95), eps 1e-8, wd 0.1.

    Args:
        lr: learning rate (6e-4).
        betas: (β1, β2) = (momentum, momentum_2): β1 the Nesterov mix, β2 the momentum decay (0.95, 0.98).
        nesterov: orthogonalise the Nesterov mix instead of M (True).
        weight_decay: decoupled weight decay, multiplied by the current lr (0.1).
        eps: added to ‖S‖_F in γ (1e-8).
        ns_steps, ns_coefficients, ns_dtype, ns_method: Newton–Schulz settings, as in Muon (5, "kellerjordan", "auto",
            "auto").
    """

    flops_per_element = 12  # as Muon plus sign, Frobenius norm and scaling
    matrices_only = True
    uses_newton_schulz = True
    default_routing = "olion"
    default_backup_adamw = dict(lr_ratio=1.0, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

    def __init__(self, params, lr: float = 6e-4, betas: tuple[float, float] = (0.95, 0.98), nesterov: bool = True,
                 weight_decay: float = 0.1, eps: float = 1e-8, ns_steps: int = 5,
                 ns_coefficients: str = "kellerjordan", ns_dtype: str = "auto", ns_method: str = "auto"):
        check_number("lr", lr, 0, lo_open=True)
        check_betas("betas", betas)
        check_number("weight_decay", weight_decay, 0)
        check_number("eps", eps, 0)
        check_ns_args(ns_steps, ns_coefficients, ns_dtype, ns_method)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), nesterov=nesterov, weight_decay=weight_decay,
                                      eps=eps, ns_steps=int(ns_steps), ns_coefficients=ns_coefficients,
                                      ns_dtype=ns_dtype, ns_method=ns_method))

    def _step(self, groups):
        ns_inputs, params = [], []
        for group, ps, grads, bufs in self._groups_with_grads(groups, "exp_avg"):
            beta1, beta2 = group["betas"]
            torch._foreach_lerp_(bufs, grads, 1.0 - beta2)
            updates = [Lerp(g, b, beta1) for g, b in zip(grads, bufs)] if group["nesterov"] else bufs
            ns_inputs += [(group, u) for u in updates]
            params += ps
        for (group, _), p, o in zip(ns_inputs, params, self._orthogonalize(ns_inputs)):
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            rows, cols = o.shape
            S = torch.sign(o)
            # γ = √min·0.2·√max / (‖S‖_F + eps), ‖S‖_F = √(number of non-zeros) exactly; kept on the device (no sync)
            gamma = 0.2 * math.sqrt(min(rows, cols) * max(rows, cols)) / (torch.count_nonzero(S).double().sqrt() + eps)
            if wd != 0:
                p.mul_(1.0 - lr * wd)
            p.addcmul_(S.reshape(p.shape), gamma.to(p.dtype), value=-lr)
