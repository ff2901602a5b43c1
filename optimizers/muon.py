"""Muon: MomentUm Orthogonalized by Newton–Schulz (Keller Jordan 2024; KellerJordan/Muon: muon.py).

Update, per matrix W of shape (rows, cols) (KellerJordan/Muon `muon_update`, = torch.optim.Muon up to its NS eps;
docs/optimizers.md §5):
    B ← μ·B + (1−μ)·g                          EMA momentum (buf.lerp_(g, 1−μ))
    U ← (1−μ)·g + μ·B   if nesterov else B     Nesterov: g.lerp(B, μ)
    O ← NS_K(U)                                Newton–Schulz (newton_schulz.py), batched by shape
    W ← W·(1 − lr·wd)                          decoupled decay with the UNadjusted lr
    W ← W − lr·s·O                             s = scaling factor:
        "original"         √max(1, rows/cols)          (KellerJordan; torch.optim.Muon adjust_lr_fn=None)
        "match_rms_adamw"  0.2·√max(rows, cols)        (Moonlight, arXiv 2502.16982; update RMS ≈ 0.2)

Tensors with more than two dimensions are orthogonalised as (size(0), −1) (newton_schulz.matrix_shape).
State: one buffer `momentum_buffer` per matrix, on every rank; under torch.distributed only the NS work is split
across ranks and all-gathered, so state_dict() on any rank is complete. Embeddings, head, norms and biases go to
the backup AdamW (routing "hidden"), with KellerJordan's MuonWithAuxAdam defaults.
Nesterov with EMA momentum μ gives exactly the Lion direction with (β1, β2) = (μ², μ) (docs/optimizers.md §1.3).
"""

import math

import torch

from .base import HybridOptimizer, check_choice, check_number
from .newton_schulz import Lerp, check_ns_args, rms_match_scale

SCALINGS = ("original", "match_rms_adamw")


def momentum_step(bufs, grads, mu: float, nesterov: bool):
    """Muon's momentum on lists of tensors: B ← μ·B + (1−μ)·g; returns the NS inputs, (1−μ)·g + μ·B with Nesterov
    (as Lerp(g, B, μ): orthogonalize computes it straight into its NS batch), else B (shared with NorMuon)."""
    torch._foreach_lerp_(bufs, grads, 1.0 - mu)
    return [Lerp(g, b, mu) for g, b in zip(grads, bufs)] if nesterov else bufs


def scale_factor(scaling: str, rows: int, cols: int) -> float:
    """Multiplier of the NS output for a (rows, cols) matrix (see the module docstring)."""
    if scaling == "original":
        return math.sqrt(max(1.0, rows / cols))
    return rms_match_scale(rows, cols)


class Muon(HybridOptimizer):
    """Muon with KellerJordan/Muon's defaults (`Muon` and `MuonWithAuxAdam`).

    Args:
        lr: learning rate (0.02).
        momentum: μ of the EMA momentum buffer (0.95).
        nesterov: orthogonalise the Nesterov mix (1−μ)·g + μ·B instead of B (True).
        weight_decay: decoupled weight decay, with the unadjusted lr (0.0).
        ns_steps: Newton–Schulz iterations (5).
        ns_coefficients: "kellerjordan" (the quintic at every step) or "polar_express" (per-step coefficients).
        ns_dtype: "auto" (bfloat16 on CUDA and on CPUs with bf16 matrix units, AMX or AVX512-BF16; the input's dtype
            elsewhere and for float64 inputs: newton_schulz.resolve_dtype), "bfloat16", "float32" or "float64".
        ns_method: "auto" (Gram Newton–Schulz for float32 NS on matrices with max > 1.5·min dims, where it needs
            fewer FLOPs; the standard iteration otherwise: newton_schulz.resolve_method), "standard" or "gram".
        scaling: "original" (√max(1, rows/cols)) or "match_rms_adamw" (0.2·√max(rows, cols)).
    """

    flops_per_element = 8  # momentum lerp, Nesterov lerp, decay, scaled update (NS counted separately)
    matrices_only = True
    uses_newton_schulz = True
    default_routing = "hidden"
    default_backup_adamw = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.0)

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_coefficients: str = "kellerjordan",
                 ns_dtype: str = "auto", ns_method: str = "auto", scaling: str = "original"):
        check_number("lr", lr, 0, lo_open=True)
        check_number("momentum", momentum, 0, 1)
        check_number("weight_decay", weight_decay, 0)
        check_choice("scaling", scaling, SCALINGS)
        check_ns_args(ns_steps, ns_coefficients, ns_dtype, ns_method)
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      ns_steps=int(ns_steps), ns_coefficients=ns_coefficients, ns_dtype=ns_dtype,
                                      ns_method=ns_method, scaling=scaling))

    def _step(self, groups):
        ns_inputs, params = [], []
        for group, ps, grads, bufs in self._groups_with_grads(groups, "momentum_buffer"):
            updates = momentum_step(bufs, grads, group["momentum"], group["nesterov"])
            ns_inputs += [(group, u) for u in updates]
            params += ps
        outs = self._orthogonalize(ns_inputs)
        self._apply_matrix_updates([g for g, _ in ns_inputs], params, outs,
                                   lambda g, rows, cols: scale_factor(g["scaling"], rows, cols))
