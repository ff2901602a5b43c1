"""A config recipe → ONE optimizer for a model. Generic: everything it knows about an optimizer comes from its class
(the constructor's typed signature and the class attributes of base.HybridOptimizer), so a new optimizer needs no
edit here.

A recipe is a method (a name in optimizers.OPTIMIZERS) and a table of settings: the constructor's arguments plus
the routing keys below, which any optimizer accepts (they decide which parameters go to a backup AdamW):
  routing              a rule of routing.py ("none" | "hidden" | "lionmuon" | "olion" | "leo"); default: the class's
  to_backup, to_matrix name substrings that override the rule
  adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay
                       the backup AdamW; defaults: the class's default_backup_adamw (lr may be a ratio of the lr)
"""

import difflib
import inspect
import typing

from config import coerce
from errors import ConfigError

from . import OPTIMIZERS, optimizer_class
from .routing import ROUTINGS, route

ROUTING_KEYS = {"routing": str, "to_backup": list[str], "to_matrix": list[str], "adamw_lr": float,
                "adamw_betas": tuple[float, float], "adamw_eps": float, "adamw_weight_decay": float}


def constructor_arguments(cls) -> dict[str, tuple[object, object]]:
    """{argument: (type, default)} of cls.__init__, without self and params: the optimizer's settings."""
    hints = typing.get_type_hints(cls.__init__)
    sig = list(inspect.signature(cls.__init__).parameters.values())[2:]
    return {p.name: (hints.get(p.name, type(p.default)), p.default) for p in sig}


def recipe_arguments(method: str, settings: dict, where: str = "optimizer"):
    """(class, constructor kwargs, routing kwargs) of a recipe, keys and types checked (ConfigError, one line)."""
    if method not in OPTIMIZERS:
        raise ConfigError(f"{where}: optimizer {method!r} is unknown. Use one of: {', '.join(OPTIMIZERS)}")
    cls = optimizer_class(method)
    args = constructor_arguments(cls)
    kwargs, routing = {}, {}
    for key, value in settings.items():
        if key in ROUTING_KEYS:
            routing[key] = coerce(f"{where}.{key}", value, ROUTING_KEYS[key])
            if key in ("to_backup", "to_matrix") and not all(routing[key]):
                raise ConfigError(f"{where}.{key} = {value!r} must be a list of non-empty name substrings")
        elif key in args:
            kwargs[key] = coerce(f"{where}.{key}", value, args[key][0])
        else:
            valid = list(args) + list(ROUTING_KEYS)
            close = difflib.get_close_matches(key, valid, n=1)
            raise ConfigError(f"unknown key {where}.{key}: it is not used by optimizer {method!r}"
                              f"{f' (did you mean {close[0]!r}?)' if close else ''}; valid: {', '.join(valid)}")
    return cls, kwargs, routing


def build_optimizer(model, method: str, settings: dict, where: str = "optimizer"):
    """ONE optimizer for all of `model`'s trainable parameters (anything with named_parameters()).

    Routing "none": one group with weight decay for ≥2-D parameters, one without for the rest (nanoGPT). Any other
    rule: the routed parameters in the optimizer's own group, the rest in a backup_adamw group with its own
    lr/base_lr. Bad settings raise ConfigError naming `where`.key.
    """
    cls, kwargs, r = recipe_arguments(method, settings, where)
    rule = r.get("routing", cls.default_routing)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("the model has no trainable parameters to optimise")
    try:
        if rule not in ROUTINGS:
            raise ValueError(f"routing = {rule!r} is invalid; use one of: {', '.join(ROUTINGS)}")
        if rule == "none" and cls.matrices_only:
            raise ValueError(f"routing = 'none' is invalid for optimizer {method!r}, which updates only matrices; "
                             f"use a rule that gives 1-D parameters to the backup AdamW, e.g. {cls.default_routing!r}")
        if rule == "none":
            set_keys = [k for k in r if k != "routing"]
            if set_keys:
                raise ValueError(f"{set_keys[0]} is set, but routing = 'none' sends no parameter to a backup "
                                 f"AdamW; set routing (one of: {', '.join(ROUTINGS[1:])}) or remove it")
            groups = [dict(params=[(n, p) for n, p in named if p.ndim >= 2])]
            if "weight_decay" in constructor_arguments(cls):
                groups.append(dict(params=[(n, p) for n, p in named if p.ndim < 2], weight_decay=0.0))
        else:
            matrix, backup = route(named, rule, r.get("to_backup"), r.get("to_matrix"), cls.matrices_only)
            backup_args = dict(cls.default_backup_adamw)
            if "lr_ratio" in backup_args:  # the backup lr follows the optimizer's lr (OLion 1×, Leo 0.1×)
                main_lr = kwargs.get("lr", constructor_arguments(cls)["lr"][1])
                backup_args["lr"] = backup_args.pop("lr_ratio") * main_lr
            backup_args.update({k[len("adamw_"):]: v for k, v in r.items() if k.startswith("adamw_")})
            groups = [dict(params=matrix), dict(params=backup, backup_adamw=True, **backup_args)]
        return cls([g for g in groups if g["params"]], **kwargs)
    except ValueError as e:
        raise ConfigError(f"{where}.{e}") from None


def check_recipe(method: str, settings: dict, where: str = "optimizer") -> None:
    """Validate a recipe without a model (config loading): build it for a stand-in model with one matrix, one
    vector and one embedding-like matrix, so that every routing rule has something to route."""
    import torch

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Parameter(torch.zeros(16, 2))
            self.c_fc = torch.nn.Parameter(torch.zeros(2, 2))
            self.ln_f = torch.nn.Parameter(torch.zeros(2))

    recipe_arguments(method, settings, where)  # keys and types, overrides included
    # The overrides name the real model's parameters, so whether they match anything is checked at build time.
    build_optimizer(StandIn(), method, {k: v for k, v in settings.items() if k not in ("to_backup", "to_matrix")},
                    where)
