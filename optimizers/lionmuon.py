"""LionMuon: Lion steps with a Muon step every P-th step, on one shared dual-EMA buffer (Algorithm 1 of
"LionMuon" by Beznosikov, Bolatov, Horváth, Kornilov, Riabinin, Takáč, Veprikov, arXiv 2605.19811; code
brain-lab-research/lion-muon: src/optim/lion_muon.py; docs/optimizers.md §6).

Update, per 2-D parameter W (m×n), step t counting from 0 (the first step is a Muon step):
    Ĝ ← β1·M + (1−β1)·g                                   Lion interpolation with the OLD buffer
    if t mod P == 0 (Muon step):  W ← W·(1 − ηM·wd) − ηM · 0.2·√max(m,n) · NS_5(Ĝ)
    else            (Lion step):  W ← W·(1 − ηL·wd) − ηL · sign(Ĝ)
    M ← β2·M + (1−β2)·g                                   every step, after the update
- ηM is the group's `lr` (scheduled); ηL = lion_lr_ratio·lr, so one schedule scales both and ηL/ηM stays fixed
  (the code stores lion_lr as that ratio too). `lion_lr` is the absolute ηL at construction (no None: the
  reference code's None means 0.01·ηM; give the value). Decay uses the step's own lr (ηM on Muon steps, ηL on
  Lion steps).
- The 0.2·√max(m,n) factor of the Muon step is the code's and every run's (Algorithm 1 omits it); Lion steps use
  the raw sign. NS: KellerJordan quintic, 5 steps (every experiment; the code default is 6), bf16 on CUDA (and,
  with ns_dtype "auto", on CPUs with bf16 matrix units: newton_schulz.resolve_dtype).
- The Lion steps compute Ĝ and M with lerp (`g.lerp(M, β1)`, `M.lerp_(g, 1−β2)`), the form the committed CPU
  results were produced with; the reference code (and optimizers/lion.py) multiply and add. The two are equal in
  exact arithmetic and differ in fp32 rounding only. On CPU a Lion step runs in one pass per element
  (sign_kernels.py), or without a C compiler on cache-sized slices (base.in_chunks); the same result bit for bit.
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

The defaults are the paper's best 124M run `lionmuon_k2`, with its backup AdamW (params routed by `ndim ≥ 2 and
size(0) < 10000`, routing.py). (The code's class defaults — lr 2e-3, lion_lr 0.01·lr, betas (0.95, 0.99), P = 5,
wd 0 — are overridden by every experiment.) State: one buffer `exp_avg` per matrix.
"""

import math

import torch

from . import sign_kernels
from .base import HybridOptimizer, check_betas, check_number, in_chunks
from .newton_schulz import check_ns_args, rms_match_scale


def check_period(period) -> float:
    if isinstance(period, bool) or not isinstance(period, (int, float)) or not (
            (math.isinf(period) and period > 0) or (period >= 1 and float(period).is_integer())):
        raise ValueError(f"period = {period!r} is invalid; it must be an integer >= 1 or inf")
    return float(period)


def is_muon_step(step: int, period: float, first_step_muon: bool) -> bool:
    """Algorithm 1's test `t mod P == 0`, with P = inf meaning no Muon step (unless first_step_muon and t == 0)."""
    if math.isinf(period):
        return first_step_muon and step == 0
    return step % int(period) == 0


def dual_ema(grads, bufs, beta1: float, beta2: float):
    """Ĝ = β1·M + (1−β1)·g from the OLD buffer (returned), then M ← β2·M + (1−β2)·g in place (lists of tensors)."""
    directions = torch._foreach_lerp(grads, bufs, beta1)
    torch._foreach_lerp_(bufs, grads, 1.0 - beta2)
    return directions


class LionMuon(HybridOptimizer):
    """LionMuon with the paper's best 124M run as defaults.

    Args:
        lr: ηM, the learning rate of the Muon steps (1e-3).
        lion_lr: ηL, the learning rate of the Lion steps (5e-5); stored as the ratio ηL/ηM.
        betas: (β1, β2): β1 interpolates buffer and gradient for the direction Ĝ, β2 decays the buffer (0.9, 0.99).
        period: P: a Muon step when t mod P == 0, a Lion step otherwise; an integer ≥ 1, or inf for none (2).
        weight_decay: decoupled weight decay, with the step's own lr (0.1).
        first_step_muon: with P = inf, take the reference code's single Muon step at t = 0 (False).
        ns_steps, ns_coefficients, ns_dtype, ns_method: Newton–Schulz settings, as in Muon (5, "kellerjordan", "auto",
            "auto").
    """

    flops_per_element = 11  # Lion's (the Muon steps' NS counted separately)
    matrices_only = True
    default_routing = "lionmuon"
    # lion-muon src/optim/lion_muon.py with the 124M scripts' --lr 1e-3 --wd 0.1
    default_backup_adamw = dict(lr=1e-3, betas=(0.8, 0.999), eps=1e-8, weight_decay=0.1)

    def __init__(self, params, lr: float = 1e-3, lion_lr: float = 5e-5, betas: tuple[float, float] = (0.9, 0.99),
                 period: float = 2, weight_decay: float = 0.1, first_step_muon: bool = False, ns_steps: int = 5,
                 ns_coefficients: str = "kellerjordan", ns_dtype: str = "auto", ns_method: str = "auto"):
        check_number("lr", lr, 0, lo_open=True)
        check_number("lion_lr", lion_lr, 0)
        check_betas("betas", betas)
        check_number("weight_decay", weight_decay, 0)
        period = check_period(period)
        check_ns_args(ns_steps, ns_coefficients, ns_dtype, ns_method)
        super().__init__(params, dict(lr=lr, lion_lr_ratio=lion_lr / lr, betas=tuple(betas), period=period,
                                      weight_decay=weight_decay, first_step_muon=first_step_muon,
                                      ns_steps=int(ns_steps), ns_coefficients=ns_coefficients, ns_dtype=ns_dtype,
                                      ns_method=ns_method, step=0))

    def takes_ns_step(self, group: dict) -> bool:
        return is_muon_step(group["step"], group["period"], group["first_step_muon"])

    def is_muon_step(self) -> bool:
        """Whether the next step() is a Muon step (for the first group; all groups share one phase)."""
        return self.takes_ns_step(next(g for g in self.param_groups if not g["backup_adamw"]))

    def _step(self, groups):
        ns_inputs, muon_params = [], []
        for group in groups:  # the step counter advances in every group, with gradients or not
            group["step"] += 1
        for group, ps, grads, bufs in self._groups_with_grads(groups, "exp_avg"):
            betas = group["betas"]
            if is_muon_step(group["step"] - 1, group["period"], group["first_step_muon"]):
                ns_inputs += [(group, d) for d in dual_ema(grads, bufs, *betas)]
                muon_params += ps
                continue
            lr, wd = group["lr"] * group["lion_lr_ratio"], group["weight_decay"]
            rest = sign_kernels.dual_ema_sign_step(ps, grads, bufs, lr, wd, *betas)  # CPU: one pass, same bits
            for ps_, gs, ms in in_chunks(*rest):  # Lion step: W ← W·(1 − ηL·wd) − ηL·sign(Ĝ)
                directions = dual_ema(gs, ms, *betas)
                if wd != 0:
                    torch._foreach_mul_(ps_, 1.0 - lr * wd)
                torch._foreach_sign_(directions)
                torch._foreach_add_(ps_, directions, alpha=-lr)
        outs = self._orthogonalize(ns_inputs)
        self._apply_matrix_updates([g for g, _ in ns_inputs], muon_params, outs,
                                   lambda g, rows, cols: rms_match_scale(rows, cols))
