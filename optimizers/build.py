"""OptimizerConfig (the TOML [optimizer] section) and build_optimizer(model, cfg, device_type).

Every hyperparameter field defaults to None, meaning "the method's default" from METHOD_DEFAULTS below (each entry
names its source). `OptimizerConfig.resolved()` returns the effective values; `validate()` rejects bad values and
fields that the chosen method does not use (so a typo such as `betas` for muon is an error, not silently ignored).

Field meanings (which methods use them in brackets):
  name                 one of OPTIMIZERS
  lr                   the main learning rate: AdamW/Lion/Signum/Leo lr, Muon/OLion lr, LionMuon/SignMuon ηM
  betas                [β1, β2]: AdamW; Lion, LionMuon, Leo (β1 interpolation, β2 buffer decay); OLion (β1 the
                       Nesterov mix "momentum", β2 the buffer decay "momentum_2")
  momentum             single β: Signum, Muon, SignMuon (β1 = β2 = β)
  nesterov             Muon, OLion
  weight_decay         decoupled weight decay of the main groups (plain AdamW/Lion/Signum: ≥2-D params only)
  eps                  AdamW, OLion (γ denominator), Leo
  ns_steps, ns_coefficients ("kellerjordan"|"polar_express"), ns_dtype ("auto"|"bfloat16"|"float32"|"float64")
                       Newton–Schulz settings: Muon, OLion, LionMuon, SignMuon
  scaling              Muon: "original" (√max(1, rows/cols)) | "match_rms_adamw" (0.2·√max(rows, cols))
  period               LionMuon/SignMuon P: integer ≥ 1 or inf (TOML `inf`)
  lion_lr              LionMuon/SignMuon ηL, absolute; stored in the optimizer as the ratio ηL/ηM
  first_step_muon      LionMuon/SignMuon with P = inf: take the paper code's single Muon step at t = 0
  align_const          Leo: the RMS of its 2-D updates
  routing              hybrid methods: routing rule ("hidden"|"lionmuon"|"olion"|"leo", routing.py)
  adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay
                       the backup AdamW of the hybrid methods; adamw_lr absolute (OLion/Leo default: a fixed
                       ratio of lr, see ADAMW_LR_RATIO)
  to_backup, to_matrix name substrings that override the routing rule
"""

import math
from dataclasses import dataclass, fields

from errors import ConfigError

from .adamw import AdamW
from .leo import Leo
from .lion import Lion
from .lionmuon import LionMuon
from .muon import SCALINGS, Muon
from .newton_schulz import NS_COEFFICIENTS, NS_DTYPES
from .olion import OLion
from .routing import ROUTINGS, route
from .signmuon import SignMuon
from .signum import Signum

OPTIMIZERS = {
    "adamw": AdamW,
    "lion": Lion,
    "signum": Signum,
    "muon": Muon,
    "olion": OLion,
    "lionmuon": LionMuon,
    "signmuon": SignMuon,
    "leo": Leo,
}

_NS = dict(ns_steps=5, ns_coefficients="kellerjordan", ns_dtype="auto")
_OVERRIDES = dict(to_backup=[], to_matrix=[])
# The LionMuon paper's backup AdamW (lion-muon src/optim/lion_muon.py with the 124M scripts' --lr 1e-3 --wd 0.1).
_LM_BACKUP = dict(adamw_lr=1e-3, adamw_betas=[0.8, 0.999], adamw_eps=1e-8, adamw_weight_decay=0.1)

METHOD_DEFAULTS: dict[str, dict] = {
    # torch.optim.AdamW's defaults.
    "adamw": dict(lr=1e-3, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01),
    # Chen et al. 2023 / google/automl lion_pytorch.py.
    "lion": dict(lr=1e-4, betas=[0.9, 0.99], weight_decay=0.0),
    # optax.signum's β = 0.9; lr = the LionMuon paper's 124M Signum ηL.
    "signum": dict(lr=1e-4, momentum=0.9, weight_decay=0.0),
    # KellerJordan/Muon (Muon + MuonWithAuxAdam defaults).
    "muon": dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, scaling="original", **_NS,
                 routing="hidden", adamw_lr=3e-4, adamw_betas=[0.9, 0.95], adamw_eps=1e-10, adamw_weight_decay=0.0,
                 **_OVERRIDES),
    # kv-wang/OLion: class betas/eps/NS; lr, wd and the backup AdamW from its GPT-2 script (nanoGPT/run.sh, train.py).
    "olion": dict(lr=6e-4, betas=[0.95, 0.98], nesterov=True, weight_decay=0.1, eps=1e-8, **_NS, routing="olion",
                  adamw_lr=None, adamw_betas=[0.9, 0.95], adamw_eps=1e-8, adamw_weight_decay=0.1, **_OVERRIDES),
    # LionMuon paper, 124M best run lionmuon_k2 (spec §6.4).
    "lionmuon": dict(lr=1e-3, lion_lr=5e-5, betas=[0.9, 0.99], period=2.0, weight_decay=0.1, first_step_muon=False,
                     **_NS, routing="lionmuon", **_LM_BACKUP, **_OVERRIDES),
    # LionMuon paper, 124M signmuon_fixed_k2.
    "signmuon": dict(lr=2e-3, lion_lr=5e-5, momentum=0.9, period=2.0, weight_decay=0.1, first_step_muon=False,
                     **_NS, routing="lionmuon", **_LM_BACKUP, **_OVERRIDES),
    # vukrosic/leo-optimizer class defaults, align_const 0.3 of its scripts/README; backup AdamW(0.1·lr, wd 0.1).
    "leo": dict(lr=1e-3, betas=[0.9, 0.99], weight_decay=0.01, eps=1e-8, align_const=0.3, routing="leo",
                adamw_lr=None, adamw_betas=[0.9, 0.999], adamw_eps=1e-8, adamw_weight_decay=0.1, **_OVERRIDES),
}
# Methods whose backup-AdamW lr defaults to a fixed multiple of lr (OLion shares its lr; Leo uses 0.1·leo_lr).
ADAMW_LR_RATIO = {"olion": 1.0, "leo": 0.1}
HYBRIDS = ("muon", "olion", "lionmuon", "signmuon", "leo")


@dataclass
class OptimizerConfig:
    """The [optimizer] section. None = the method's default (METHOD_DEFAULTS); see the module docstring."""

    name: str = "adamw"
    lr: float | None = None
    betas: list[float] | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    eps: float | None = None
    ns_steps: int | None = None
    ns_coefficients: str | None = None
    ns_dtype: str | None = None
    scaling: str | None = None
    period: float | None = None
    lion_lr: float | None = None
    first_step_muon: bool | None = None
    align_const: float | None = None
    routing: str | None = None
    adamw_lr: float | None = None
    adamw_betas: list[float] | None = None
    adamw_eps: float | None = None
    adamw_weight_decay: float | None = None
    to_backup: list[str] | None = None
    to_matrix: list[str] | None = None

    def validate(self) -> "OptimizerConfig":
        """Raise ConfigError (one line: key, bad value, valid range) for anything wrong; return self."""
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer.name = {self.name!r} is unknown. Use one of: {', '.join(OPTIMIZERS)}")
        allowed = METHOD_DEFAULTS[self.name]
        for f in fields(self):
            if f.name != "name" and getattr(self, f.name) is not None and f.name not in allowed:
                raise ConfigError(f"optimizer.{f.name} is not used by optimizer {self.name!r}; remove it "
                                  f"(it uses: {', '.join(allowed)})")
        v = self.resolved()

        def number(key, lo=None, hi=None, lo_open=False, hi_open=True):
            x = v[key]
            if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
                raise ConfigError(f"optimizer.{key} = {x!r} is not a number")
            bad = (lo is not None and (x <= lo if lo_open else x < lo)) or \
                  (hi is not None and (x >= hi if hi_open else x > hi))
            if bad:
                lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
                hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
                rng = " and ".join(filter(None, [lo_s, hi_s]))
                raise ConfigError(f"optimizer.{key} = {x} is out of range; it must be {rng}")

        def betas(key):
            b = v[key]
            if not isinstance(b, (list, tuple)) or len(b) != 2 or \
                    not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in b):
                raise ConfigError(f"optimizer.{key} = {b!r} is invalid; it must be two numbers in [0, 1), "
                                  "e.g. [0.9, 0.99]")

        def choice(key, options):
            if v[key] not in options:
                raise ConfigError(f"optimizer.{key} = {v[key]!r} is invalid; use one of: {', '.join(options)}")

        def flag(key):
            if not isinstance(v[key], bool):
                raise ConfigError(f"optimizer.{key} = {v[key]!r} must be true or false")

        for key in allowed:
            if key in ("lr", "adamw_lr"):
                number(key, 0, None, lo_open=True)
            elif key in ("weight_decay", "adamw_weight_decay", "lion_lr", "eps", "adamw_eps"):
                number(key, 0)
            elif key == "momentum":
                number(key, 0, 1)
            elif key in ("betas", "adamw_betas"):
                betas(key)
            elif key == "align_const":
                number(key, 0, None, lo_open=True)
            elif key == "ns_steps":
                x = v[key]
                if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x < 100:
                    raise ConfigError(f"optimizer.ns_steps = {x!r} is invalid; it must be an integer in [1, 99]")
            elif key == "ns_coefficients":
                choice(key, NS_COEFFICIENTS)
            elif key == "ns_dtype":
                choice(key, NS_DTYPES)
            elif key == "scaling":
                choice(key, SCALINGS)
            elif key == "routing":
                choice(key, ROUTINGS)
            elif key in ("nesterov", "first_step_muon"):
                flag(key)
            elif key == "period":
                x = v[key]
                ok = isinstance(x, (int, float)) and not isinstance(x, bool) and \
                    (math.isinf(x) and x > 0 or (x >= 1 and float(x).is_integer()))
                if not ok:
                    raise ConfigError(f"optimizer.period = {x!r} is invalid; it must be an integer >= 1 or inf")
            elif key in ("to_backup", "to_matrix"):
                x = v[key]
                if not isinstance(x, (list, tuple)) or not all(isinstance(s, str) and s for s in x):
                    raise ConfigError(f"optimizer.{key} = {x!r} must be a list of non-empty name substrings")
        return self

    def resolved(self) -> dict:
        """The effective hyperparameters of this method: set fields, else METHOD_DEFAULTS (adamw_lr made absolute)."""
        if self.name not in METHOD_DEFAULTS:
            raise ConfigError(f"optimizer.name = {self.name!r} is unknown. Use one of: {', '.join(OPTIMIZERS)}")
        out = {"name": self.name}
        for key, default in METHOD_DEFAULTS[self.name].items():
            value = getattr(self, key)
            out[key] = default if value is None else value
        if out.get("adamw_lr", 0) is None:
            out["adamw_lr"] = ADAMW_LR_RATIO[self.name] * out["lr"]
        return out


def build_optimizer(model, cfg: OptimizerConfig, device_type: str = "cpu"):
    """ONE optimizer for all of `model`'s trainable parameters (model: anything with named_parameters()).

    Plain methods (adamw, lion, signum): two groups, weight decay on ≥2-D params only (nanoGPT). Hybrid methods:
    a "main" group with the routed matrices and a kind="adamw" group with the rest (routing.py), each with its own
    lr/base_lr. device_type ("cuda", "cpu", ...) is informational: fused AdamW kernels and bf16 NS are chosen from
    the parameters' device at step time, so a checkpoint resumes on either kind of device.
    """
    cfg.validate()
    h = cfg.resolved()
    name = h["name"]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("the model has no trainable parameters to optimise")
    if name in HYBRIDS:
        matrix, backup = route(named, h["routing"], h["to_backup"], h["to_matrix"])
        groups = []
        if matrix:
            groups.append(dict(params=matrix))
        if backup:
            groups.append(dict(params=backup, kind="adamw", lr=h["adamw_lr"], betas=tuple(h["adamw_betas"]),
                               eps=h["adamw_eps"], weight_decay=h["adamw_weight_decay"]))
    else:
        from .routing import clean_name

        decay = [(clean_name(n), p) for n, p in named if p.ndim >= 2]
        no_decay = [(clean_name(n), p) for n, p in named if p.ndim < 2]
        groups = [g for g in (dict(params=decay), dict(params=no_decay, weight_decay=0.0)) if g["params"]]
    kwargs = {k: v for k, v in h.items() if k not in ("name", "routing", "to_backup", "to_matrix")
              and not k.startswith("adamw_")}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return OPTIMIZERS[name](groups, **kwargs)
