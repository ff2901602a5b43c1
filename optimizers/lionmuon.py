"""LionMuon: Lion steps with a Muon step every P-th step, on one shared dual-EMA buffer (Algorithm 1 of
"LionMuon" by Beznosikov, Bolatov, Horváth, Kornilov, Riabinin, Takáč, Veprikov, arXiv 2605.19811; code
brain-lab-research/lion-muon: src/optim/lion_muon.py; spec §6).

Update, per 2-D parameter W (m×n), step t counting from 0 (the first step is a Muon step):
    Ĝ ← β1·M + (1−β1)·g                                   Lion interpolation with the OLD buffer
    if t mod P == 0 (Muon step):  W ← W·(1 − ηM·wd) − ηM · 0.2·√max(m,n) · NS_5(Ĝ)
    else            (Lion step):  W ← W·(1 − ηL·wd) − ηL · sign(Ĝ)
    M ← β2·M + (1−β2)·g                                   every step, after the update
- ηM is the group's `lr` (scheduled); ηL = lion_lr_ratio·lr, so one schedule scales both and ηL/ηM stays fixed
  (the code stores lion_lr as that ratio too). Decay uses the step's own lr (ηM on Muon steps, ηL on Lion steps).
- The 0.2·√max(m,n) factor of the Muon step is the code's and every run's (Algorithm 1 omits it); Lion steps use
  the raw sign. NS: KellerJordan quintic, 5 steps (every experiment; the code default is 6), bf16 on CUDA.
- P is an integer ≥ 1 or inf. P = inf takes no Muon step, which is Algorithm 1's Lion; the paper's "Lion" and
  "Signum" runs used P = 1e7 and so took ONE Muon step at t = 0 (at the warm-up lr): `first_step_muon=True`
  reproduces that quirk. Finite P always starts with a Muon step.
- The step counter t is kept in each param group (group["step"]), so state_dict()/load_state_dict() carry the
  Muon/Lion phase across a resume.
- Reference-code differences we do not copy: it writes updates through a bf16 flat buffer (sign values are exact in
  bf16, NS outputs are bf16 already, but the 0.2·√max-scaled values are rounded once more there), and under DDP it
  all-reduces a full-model buffer; we all-gather only the NS outputs (newton_schulz.orthogonalize).

Special cases (the paper's README table, tested): β1 = β2 and P = 1 is the paper's "Muon" (EMA momentum, no
Nesterov); P = inf is Lion; β1 = β2 with P = inf is Signum; SignMuon is β1 = β2 (signmuon.py).

Defaults: the paper's best 124M run `lionmuon_k2`: lr (ηM) 1e-3, lion_lr (ηL) 5e-5, betas (0.9, 0.99), P = 2,
weight_decay 0.1, ns_steps 5. Its backup AdamW (params routed by `ndim ≥ 2 and size(0) < 10000`, routing.py):
lr 1e-3, betas (0.8, 0.999), eps 1e-8, wd 0.1. (The code's class defaults — lr 2e-3, lion_lr 0.01·lr,
betas (0.95, 0.99), P = 5, wd 0 — are overridden by every experiment.) State: one buffer `exp_avg` per matrix.
"""

import math

import torch

from .base import NanoptimOptimizer, matrix_view
from .flops import ELEMENTWISE_PER_ELEMENT
from .lion import lion_foreach
from .muon import check_ns_args


def check_period(period) -> float:
    if not (math.isinf(period) or (period >= 1 and float(period).is_integer())) or period < 0:
        raise ValueError(f"period must be an integer >= 1 or inf, got {period}")
    return float(period)


def is_muon_step(step: int, period: float, first_step_muon: bool) -> bool:
    """Algorithm 1's test `t mod P == 0`, with P = inf meaning no Muon step (unless first_step_muon and t == 0)."""
    if math.isinf(period):
        return first_step_muon and step == 0
    return step % int(period) == 0


class LionMuon(NanoptimOptimizer):
    method = "lionmuon"

    def __init__(self, params, lr: float = 1e-3, lion_lr: float | None = 5e-5, betas=(0.9, 0.99),
                 period: float = 2, weight_decay: float = 0.1, first_step_muon: bool = False, ns_steps: int = 5,
                 ns_coefficients: str = "kellerjordan", ns_dtype: str = "auto"):
        if lr <= 0 or (lion_lr is not None and lion_lr < 0) or weight_decay < 0 or \
                not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid {type(self).__name__} hyperparameters lr={lr} lion_lr={lion_lr} "
                             f"betas={betas} wd={weight_decay}")
        period = check_period(period)
        check_ns_args(ns_steps, ns_coefficients, ns_dtype)
        super().__init__(params, dict(lr=lr, lion_lr_ratio=(lion_lr if lion_lr is not None else lr) / lr,
                                      betas=tuple(betas), period=period, weight_decay=weight_decay,
                                      first_step_muon=first_step_muon, ns_steps=int(ns_steps),
                                      ns_coefficients=ns_coefficients, ns_dtype=ns_dtype, step=0))
        for group in self.param_groups:
            if group["kind"] == "main" and any(p.ndim < 2 for p in group["params"]):
                raise ValueError(f"{type(self).__name__} only updates matrices (≥2-D); "
                                 "give 1-D params to a kind='adamw' group")

    def is_muon_step(self) -> bool:
        """Whether the next step() is a Muon step (for the first main group; all groups share one phase)."""
        g = next(g for g in self.param_groups if g["kind"] == "main")
        return is_muon_step(g["step"], g["period"], g["first_step_muon"])

    def _step_main(self, groups):
        work, muon_params, n = [], [], 0
        for group in groups:
            t = group["step"]
            group["step"] = t + 1
            ps, grads, (bufs,) = self._collect(group, ("exp_avg",))
            if not ps:
                continue
            beta1, beta2 = group["betas"]
            n += sum(p.numel() for p in ps)
            if is_muon_step(t, group["period"], group["first_step_muon"]):
                directions = torch._foreach_lerp(grads, bufs, beta1)  # Ĝ from the old buffer
                torch._foreach_lerp_(bufs, grads, 1.0 - beta2)
                work += [(group, matrix_view(d)) for d in directions]
                muon_params += ps
            else:
                lion_foreach(ps, grads, bufs, group["lr"] * group["lion_lr_ratio"], group["weight_decay"],
                             beta1, beta2)
        outs, flops = self._orthogonalize(work)
        self._apply_matrix_updates(work, muon_params, outs, lambda g, rows, cols: 0.2 * math.sqrt(max(rows, cols)))
        flops["elementwise"] += ELEMENTWISE_PER_ELEMENT[self.method] * n
        return flops
