"""SignMuon: LionMuon with β1 = β2 = β (arXiv 2605.19811, the paper's `signmuon_fixed_*` runs;
docs/optimizers.md §6.1, §6.7).

With β1 = β2 the interpolation Ĝ = β·M + (1−β)·g equals the updated buffer, so the method alternates
NS(M_t) (Muon step, every P-th step, scaled by 0.2·√max(m,n), lr ηM) and sign(M_t) (Signum step, lr ηL):
    M ← β·M + (1−β)·g
    t mod P == 0:  W ← W·(1 − ηM·wd) − ηM·0.2·√max(m,n)·NS_5(M)      else:  W ← W·(1 − ηL·wd) − ηL·sign(M)
Everything else (period, first_step_muon, the step counter in the group, ηL as a ratio, routing, the backup
AdamW) is LionMuon's: this class only ties the betas. This is NOT lion-muon's src/optim/sign_muon.py class of the
same name (Nesterov SGD momentum and an unscheduled "cheap" lr), which the paper's main plots do not use.
P = inf is Signum; P = 1 is the paper's "Muon".
"""

from .base import check_number
from .lionmuon import LionMuon


class SignMuon(LionMuon):
    """SignMuon with the paper's 124M `signmuon_fixed_k2` as defaults.

    Args:
        lr: ηM, the learning rate of the Muon steps (2e-3).
        lion_lr: ηL, the learning rate of the sign steps (5e-5).
        momentum: β = β1 = β2 (0.9).
        period, weight_decay, first_step_muon, ns_steps, ns_coefficients, ns_dtype, ns_method: as in LionMuon (2,
            0.1, False, 5, "kellerjordan", "auto", "auto").
    """

    flops_per_element = 8  # Signum's (the Muon steps' NS counted separately)

    def __init__(self, params, lr: float = 2e-3, lion_lr: float = 5e-5, momentum: float = 0.9,
                 period: float = 2, weight_decay: float = 0.1, first_step_muon: bool = False, ns_steps: int = 5,
                 ns_coefficients: str = "kellerjordan", ns_dtype: str = "auto", ns_method: str = "auto"):
        check_number("momentum", momentum, 0, 1)  # before LionMuon's check, which would name it `betas`
        super().__init__(params, lr=lr, lion_lr=lion_lr, betas=(momentum, momentum), period=period,
                         weight_decay=weight_decay, first_step_muon=first_step_muon, ns_steps=ns_steps,
                         ns_coefficients=ns_coefficients, ns_dtype=ns_dtype, ns_method=ns_method)
