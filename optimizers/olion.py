"""OLion: Lion-style momentum → Newton–Schulz → sign → RMS alignment (Wang, Shen, Zhang 2026, arXiv 2602.01105).

Update, per 2-D parameter W (m×n) (kv-wang/OLion: SIT/olion.py `olion_update` and Llama/OLion_FSDP2.py; spec §7.1):
    M ← β2·M + (1−β2)·g                        momentum updated FIRST (β2 = momentum_2 = 0.98)
    U ← (1−β1)·g + β1·M   if nesterov else M   (β1 = momentum = 0.95; uses the UPDATED M)
    S ← sign(NS_5(U))                          orthogonalise, THEN take the sign
    γ ← √min(m,n) / (‖S‖_F + eps) · 0.2·√max(m,n)   (use_scale + rms_scale: RMS alignment to 0.2)
    W ← W·(1 − lr·wd) − lr·γ·S
With no zeros in S, ‖S‖_F = √(mn) and γ = 0.2: every entry moves by ±0.2·lr (we count ‖S‖_F exactly from the
number of non-zeros, so γ does not carry bf16 rounding).

Reference choice: the repo's nanoGPT/OLion.py never calls its Newton–Schulz (it is Lion with a Nesterov mix, spec
§7.2); we follow the paper and SIT/olion.py (NS, then sign). The test suite has an input where sign(NS(U)) ≠ sign(U).

Defaults: betas (0.95, 0.98) = (momentum, momentum_2), nesterov True, ns_steps 5, eps 1e-8 (all the OLion classes');
lr 6e-4 and weight_decay 0.1, the repo's GPT-2 script values (nanoGPT/run.sh, train.py; the class default lr 0.02 is
for its other settings). Its backup AdamW there shares the lr, betas (0.9, 0.95), eps 1e-8, wd 0.1.
State: one buffer `exp_avg` per matrix.
"""

import math

import torch

from .base import NanoptimOptimizer, matrix_view
from .flops import ELEMENTWISE_PER_ELEMENT
from .muon import check_ns_args


class OLion(NanoptimOptimizer):
    method = "olion"

    def __init__(self, params, lr: float = 6e-4, betas=(0.95, 0.98), nesterov: bool = True,
                 weight_decay: float = 0.1, eps: float = 1e-8, ns_steps: int = 5,
                 ns_coefficients: str = "kellerjordan", ns_dtype: str = "auto"):
        if lr < 0 or weight_decay < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid OLion hyperparameters lr={lr} betas={betas} wd={weight_decay} eps={eps}")
        check_ns_args(ns_steps, ns_coefficients, ns_dtype)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), nesterov=nesterov, weight_decay=weight_decay,
                                      eps=eps, ns_steps=int(ns_steps), ns_coefficients=ns_coefficients,
                                      ns_dtype=ns_dtype))
        for group in self.param_groups:
            if group["kind"] == "main" and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("OLion only updates matrices (≥2-D); give 1-D params to a kind='adamw' group")

    def _step_main(self, groups):
        work, params, n = [], [], 0
        for group in groups:
            ps, grads, (bufs,) = self._collect(group, ("exp_avg",))
            if not ps:
                continue
            beta1, beta2 = group["betas"]
            torch._foreach_lerp_(bufs, grads, 1.0 - beta2)
            updates = torch._foreach_lerp(grads, bufs, beta1) if group["nesterov"] else bufs
            work += [(group, matrix_view(u)) for u in updates]
            params += ps
            n += sum(p.numel() for p in ps)
        outs, flops = self._orthogonalize(work)
        for (group, _), p, o in zip(work, params, outs):
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            rows, cols = o.shape
            S = torch.sign(o)
            # γ = √min·0.2·√max / (‖S‖_F + eps), ‖S‖_F = √(number of non-zeros) exactly; kept on the device (no sync)
            gamma = 0.2 * math.sqrt(min(rows, cols) * max(rows, cols)) / (torch.count_nonzero(S).double().sqrt() + eps)
            if wd != 0:
                p.mul_(1.0 - lr * wd)
            p.addcmul_(S.reshape(p.shape), gamma.to(p.dtype), value=-lr)
        flops["elementwise"] += ELEMENTWISE_PER_ELEMENT["olion"] * n
        return flops
