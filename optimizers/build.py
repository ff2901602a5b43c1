"""A config recipe → ONE optimizer for a model. Generic: everything it knows about an optimizer comes from its class
(the constructor's typed signature and the class attributes of base.HybridOptimizer), so a new optimizer needs no
edit here.

A recipe is a method (a name in optimizers.OPTIMIZERS) and a table of settings: the constructor's arguments plus
the routing keys below, which any optimizer accepts (they decide which parameters go to a backup AdamW):
  routing              a rule of routing.py ("none" | "hidden" | "lionmuon" | "olion" | "leo"); default: the class's
  to_backup, to_matrix name substrings that override the rule
  adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay
                       the backup AdamW; defaults: the class's default_backup_adamw (lr may be a ratio of the lr)
  adamw_lr_by_name     ["SUBSTRING=LR", ...]: backup parameters whose name contains SUBSTRING get that absolute lr
                       (the first rule that matches wins; the others keep adamw_lr), each rule in a backup group of
                       its own, scheduled like every group. E.g. modded-nanogpt Track 3's three AdamW lrs:
                       adamw_lr = 0.015, adamw_lr_by_name = ["wte=0.7", "lm_head.weight=0.004"]. Every rule must
                       match some backup parameter (ConfigError otherwise, as for to_backup).
"""

import difflib
import inspect
import typing

from config import coerce
from errors import ConfigError

from . import OPTIMIZERS, optimizer_class
from .routing import ROUTINGS, route

ROUTING_KEYS = {"routing": str, "to_backup": list[str], "to_matrix": list[str], "adamw_lr": float,
                "adamw_betas": tuple[float, float], "adamw_eps": float, "adamw_weight_decay": float,
                "adamw_lr_by_name": list[str]}


def parse_lr_rules(value, where: str = "optimizer") -> list[tuple[str, float]]:
    """adamw_lr_by_name's ["SUBSTRING=LR", ...] as [(substring, lr)], checked (ConfigError, one line)."""
    rules = []
    for i, item in enumerate(value):
        substring, eq, lr_text = str(item).rpartition("=")
        try:
            lr = float(lr_text) if eq and substring else None
        except ValueError:
            lr = None
        if lr is None or not lr > 0 or lr == float("inf"):
            raise ConfigError(f"{where}.adamw_lr_by_name[{i}] = {item!r} must look like \"NAME_SUBSTRING=LR\" with "
                              f"a positive lr, e.g. \"wte=0.7\"")
        rules.append((substring, lr))
    return rules


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
            if key == "adamw_lr_by_name":
                parse_lr_rules(routing[key], where)
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
            backup_args.update({k[len("adamw_"):]: v for k, v in r.items()
                                if k.startswith("adamw_") and k != "adamw_lr_by_name"})
            groups = [dict(params=matrix)] + backup_groups(backup, backup_args,
                                                           parse_lr_rules(r.get("adamw_lr_by_name", ()), where))
        return cls([g for g in groups if g["params"]], **kwargs)
    except ValueError as e:
        raise ConfigError(f"{where}.{e}") from None


def backup_groups(backup: list, args: dict, rules: list[tuple[str, float]]) -> list[dict]:
    """The backup AdamW's param groups: the parameters no rule matches with `args`, then one group per rule of
    adamw_lr_by_name (the first matching rule wins) with that lr. ValueError for a rule that matches nothing."""
    rest, by_rule = [], [[] for _ in rules]
    for name, p in backup:
        hit = next((i for i, (substring, _) in enumerate(rules) if substring in name), None)
        (rest if hit is None else by_rule[hit]).append((name, p))
    for (substring, _), params in zip(rules, by_rule):
        if not params:
            names = ", ".join(n for n, _ in backup[:4]) + (", ..." if len(backup) > 4 else "")
            raise ValueError(f"adamw_lr_by_name rule {substring + '=...'!r} matches no parameter of the backup AdamW "
                             f"({names}); use a substring of one of their names")
    return [dict(params=rest, backup_adamw=True, **args)] + [
        dict(params=params, backup_adamw=True, **dict(args, lr=lr)) for (_, lr), params in zip(rules, by_rule)]


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
    # The overrides (and adamw_lr_by_name) name the real model's parameters, so whether they match anything is
    # checked at build time.
    build_optimizer(StandIn(), method, {k: v for k, v in settings.items()
                                        if k not in ("to_backup", "to_matrix", "adamw_lr_by_name")}, where)
