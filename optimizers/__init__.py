"""The optimizers of nanoptim, one file each (the file is the single source of the optimizer's update rule,
hyperparameters, defaults, routing and FLOPs figure; see its docstring and docs/optimizers.md):

    adamw     AdamW (torch's kernels)             lion      Lion (Chen et al. 2023)
    signum    Signum (sign of EMA momentum)       muon      Muon (KellerJordan reference)
    olion     OLion (momentum → NS → sign)        lionmuon  LionMuon (Muon every P-th step, Lion otherwise)
    signmuon  SignMuon (LionMuon, β1 = β2)        leo       Leo (row+column-normalised Lion direction)
    normuon   NorMuon (Muon + per-row 2nd moment)  ademamix  AdEMAMix (Adam + a slow EMA, mixed by α)
    soap      SOAP (Adam in Shampoo's eigenbasis)

Shared pieces, each existing once: base.py (the param-group contract, the backup AdamW, FLOPs from shapes),
newton_schulz.py (the one NS, its FLOPs and argument checks, batched by shape, split across ranks under DDP),
routing.py (which parameter goes to the backup AdamW), build.py (a config recipe → one optimizer).

Adding an optimizer: write optimizers/<name>.py with a HybridOptimizer subclass and add ONE line to OPTIMIZERS
below (or call `register(name, cls)` from your own code). Nothing else: config tables, validation, routing, FLOPs,
checkpoints and the CLI pick it up from the class.

This module does not import torch (config.py and run.sh read configs without it): classes load on first use.
"""

import importlib

# The registry: config name -> "module:Class". The only line to add for a new optimizer.
OPTIMIZERS: dict[str, object] = {
    "adamw": "optimizers.adamw:AdamW",
    "lion": "optimizers.lion:Lion",
    "signum": "optimizers.signum:Signum",
    "muon": "optimizers.muon:Muon",
    "olion": "optimizers.olion:OLion",
    "lionmuon": "optimizers.lionmuon:LionMuon",
    "signmuon": "optimizers.signmuon:SignMuon",
    "leo": "optimizers.leo:Leo",
    "normuon": "optimizers.normuon:NorMuon",
    "ademamix": "optimizers.ademamix:AdEMAMix",
    "soap": "optimizers.soap:SOAP",
}


def register(name: str, cls) -> None:
    """Make `cls` (a HybridOptimizer subclass, or a "module:Class" string) available as optimizer `name`."""
    if not name.isidentifier():
        raise ValueError(f"optimizer name {name!r} must be an identifier (it is a config table name)")
    OPTIMIZERS[name] = cls


def optimizer_class(name: str):
    """The class registered as `name` (imported on first use)."""
    entry = OPTIMIZERS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = OPTIMIZERS[name] = getattr(importlib.import_module(module), attr)
    return entry


_LAZY = {"build_optimizer": "optimizers.build", "check_recipe": "optimizers.build",
         "HybridOptimizer": "optimizers.base"}


def __getattr__(attr):  # `from optimizers import Lion, build_optimizer` without importing torch at package import
    for name, entry in OPTIMIZERS.items():
        if isinstance(entry, str) and entry.endswith(":" + attr) or getattr(entry, "__name__", None) == attr:
            return optimizer_class(name)
    if attr in _LAZY:
        return getattr(importlib.import_module(_LAZY[attr]), attr)
    raise AttributeError(f"module 'optimizers' has no attribute {attr!r}")
