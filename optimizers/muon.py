"""Muon: MomentUm Orthogonalized by Newton–Schulz (Keller Jordan 2024; KellerJordan/Muon: muon.py).

Update, per 2-D parameter W of shape (rows, cols) (KellerJordan/Muon `muon_update`, = torch.optim.Muon; spec §5):
    B ← μ·B + (1−μ)·g                          EMA momentum (buf.lerp_(g, 1−μ))
    U ← (1−μ)·g + μ·B   if nesterov else B     Nesterov: g.lerp(B, μ)
    O ← NS_K(U)                                Newton–Schulz, K = 5, KellerJordan quintic (or Polar Express),
                                               bf16 on CUDA (newton_schulz.py), batched by shape
    W ← W·(1 − lr·wd)                          decoupled decay with the UNadjusted lr
    W ← W − lr·s·O                             s = scaling factor:
        "original"         √max(1, rows/cols)          (KellerJordan; torch.optim.Muon adjust_lr_fn=None)
        "match_rms_adamw"  0.2·√max(rows, cols)        (Moonlight, arXiv 2502.16982; update RMS ≈ 0.2)

Defaults (KellerJordan/Muon `Muon`): lr 0.02, momentum 0.95, nesterov True, weight_decay 0, ns_steps 5,
scaling "original". State: one buffer `momentum_buffer` per matrix, on every rank; under torch.distributed only the
NS work is split across ranks and all-gathered, so state_dict() on any rank is complete.
Params of groups with kind="adamw" (embeddings, head, norms, biases) get the backup AdamW (base.py); KellerJordan's
MuonWithAuxAdam defaults for them are lr 3e-4, betas (0.9, 0.95), eps 1e-10, wd 0.

Nesterov with EMA momentum μ gives exactly the Lion direction with (β1, β2) = (μ², μ) (spec §1.3).
"""

import math

import torch

from .base import NanoptimOptimizer, matrix_view
from .flops import ELEMENTWISE_PER_ELEMENT
from .newton_schulz import NS_COEFFICIENTS, NS_DTYPES

SCALINGS = ("original", "match_rms_adamw")


def scale_factor(scaling: str, rows: int, cols: int) -> float:
    """Multiplier of the NS output for a (rows, cols) matrix (see the module docstring)."""
    if scaling == "original":
        return math.sqrt(max(1.0, rows / cols))
    if scaling == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown Muon scaling {scaling!r}; use one of {SCALINGS}")


def check_ns_args(ns_steps, ns_coefficients, ns_dtype):
    if int(ns_steps) != ns_steps or ns_steps < 1:
        raise ValueError(f"ns_steps must be an integer >= 1, got {ns_steps}")
    if ns_coefficients not in NS_COEFFICIENTS:
        raise ValueError(f"ns_coefficients must be one of {NS_COEFFICIENTS}, got {ns_coefficients!r}")
    if ns_dtype not in NS_DTYPES:
        raise ValueError(f"ns_dtype must be one of {NS_DTYPES}, got {ns_dtype!r}")


class Muon(NanoptimOptimizer):
    method = "muon"

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_coefficients: str = "kellerjordan",
                 ns_dtype: str = "auto", scaling: str = "original"):
        if lr < 0 or weight_decay < 0 or not 0.0 <= momentum < 1.0 or scaling not in SCALINGS:
            raise ValueError(f"invalid Muon hyperparameters lr={lr} momentum={momentum} wd={weight_decay} "
                             f"scaling={scaling!r}")
        check_ns_args(ns_steps, ns_coefficients, ns_dtype)
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      ns_steps=int(ns_steps), ns_coefficients=ns_coefficients, ns_dtype=ns_dtype,
                                      scaling=scaling))
        for group in self.param_groups:
            if group["kind"] == "main" and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon only updates matrices (≥2-D); give 1-D params to a kind='adamw' group")

    def _step_main(self, groups):
        work, params, n = [], [], 0
        for group in groups:
            ps, grads, (bufs,) = self._collect(group, ("momentum_buffer",))
            if not ps:
                continue
            mu = group["momentum"]
            torch._foreach_lerp_(bufs, grads, 1.0 - mu)
            updates = torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs
            work += [(group, matrix_view(u)) for u in updates]
            params += ps
            n += sum(p.numel() for p in ps)
        outs, flops = self._orthogonalize(work)
        self._apply_matrix_updates(work, params, outs, lambda g, rows, cols: scale_factor(g["scaling"], rows, cols))
        flops["elementwise"] += ELEMENTWISE_PER_ELEMENT["muon"] * n
        return flops
