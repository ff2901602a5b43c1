"""The optimizers of nanoptim, one file each, all torch.optim.Optimizer subclasses (see each docstring for the exact
update rule, defaults and source):

    adamw     AdamW (torch's kernels)             lion      Lion (Chen et al. 2023)
    signum    Signum (sign of EMA momentum)       muon      Muon (KellerJordan reference)
    olion     OLion (momentum → NS → sign)        lionmuon  LionMuon (Muon every P-th step, Lion otherwise)
    signmuon  SignMuon (LionMuon, β1 = β2)        leo       Leo (row+column-normalised Lion direction)

Shared pieces: newton_schulz.py (the one NS, batched by shape, split across ranks under DDP), routing.py (matrices vs
backup AdamW), flops.py (per-step FLOPs), base.py (param-group conventions, backup AdamW, last_step_flops()).

Use: `build_optimizer(model, OptimizerConfig(name="lionmuon"), device_type)` returns ONE optimizer; every group has
`lr` and `base_lr`, and the schedule sets group["lr"] = group["base_lr"] * factor for every group.
"""

from .adamw import AdamW
from .build import METHOD_DEFAULTS, OPTIMIZERS, OptimizerConfig, build_optimizer
from .leo import Leo
from .lion import Lion
from .lionmuon import LionMuon
from .muon import Muon
from .olion import OLion
from .signmuon import SignMuon
from .signum import Signum

__all__ = ["OPTIMIZERS", "OptimizerConfig", "build_optimizer", "METHOD_DEFAULTS",
           "AdamW", "Lion", "Signum", "Muon", "OLion", "LionMuon", "SignMuon", "Leo"]
