"""Run configuration: TOML files mapped onto typed dataclasses, plus `--section.key=value` overrides.

A config is data, never code: it is parsed with `tomllib` and every key is checked against the dataclass
fields below (name and type). Sections: model, data, optimizer, schedule, train, logging, checkpoint.

The optimizer section names a RECIPE: one optimizer with some settings. One config can hold several recipes, so
comparing them is a one-line change (`--optimizer.name=lionmuon_p5`):

    [optimizer]
    name = "adamw"            # the recipe to run
    [optimizer.adamw]         # a table named like an optimizer needs no `method`
    lr = 3e-3
    [optimizer.lionmuon_p5]   # a recipe of its own: method + settings
    method = "lionmuon"
    period = 5
    lion_lr = 3e-4

A name without a table runs that optimizer with its defaults. A recipe's keys are its optimizer's constructor
arguments plus the routing keys of optimizers/build.py; the optimizer's file is their single source (type, default,
meaning), so this module knows no optimizer hyperparameter. Only the chosen recipe is applied (every table is still
checked). Precedence: keys directly under [optimizer] < [optimizer.<name>] < `--optimizer.key=value`;
`--optimizer.<recipe>.key=value` edits one table.

    cfg = load_config("configs/tiny_cpu.toml", ["--optimizer.name=lion", "--train.max_steps=100"])

Every problem (bad TOML, unknown section/key, wrong type, out-of-range value) raises `ConfigError` with one
line naming the key, the value and what would be valid. Importing this module does not import torch; checking
the optimizer recipes and the model size does (load_config(..., full_check=False) skips them, for run.sh).
"""

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field

from errors import ConfigError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tiny_cpu.toml")


@dataclass
class ModelSection:
    arch: str = "gpt2"  # "gpt2" (LayerNorm, GELU, positions) | "llama" (RMSNorm, SwiGLU, RoPE) | "track3" (docs/)
    size: str = "tiny"  # a name from model.MODEL_SIZES
    n_layer: int = 0  # 0 = take it from `size`
    n_head: int = 0
    n_embd: int = 0
    block_size: int = 0  # context length = training sequence length; 0 = the size's default
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    bias: bool = False
    dropout: float = 0.0


@dataclass
class DataSection:
    dir: str = "data/shakespeare"  # a directory written by `python -m data.prepare`
    val_tokens: int = 65536  # the fixed validation set: the first val_tokens tokens of the val split
    format: str = "auto"  # "auto" | "llmc" (1024-byte header shards) | "nanogpt" (headerless uint16 train/val.bin)
    source: str = ""  # the `python -m data.prepare <source>` that writes dir (named when dir is missing); "" = unknown


@dataclass
class OptimizerSection:
    name: str = "adamw"  # the recipe: a table [optimizer.<name>] of the config, or an optimizer's name
    method: str = ""  # the optimizer the recipe runs (a name in optimizers.OPTIMIZERS); "" = `name`
    settings: dict = field(default_factory=dict)  # the recipe's keys: constructor arguments and routing keys


@dataclass
class ScheduleSection:
    kind: str = "cosine"  # "cosine" | "wsd" (warmup-stable-decay) | "step" (StepLR) | "constant"; see schedule.py
    warmup_steps: int = 0
    warmup_start_factor: float = 0.01  # lr factor at step 0 (torch LinearLR semantics, as the LionMuon runs)
    min_lr_ratio: float = 0.1  # final lr / peak lr (cosine and wsd)
    decay_fraction: float = 0.2  # wsd: the last fraction of steps cools down to min_lr_ratio
    cooldown_shape: str = "linear"  # wsd: "linear" | "sqrt" | "cosine"
    cooldown_from: str = ""  # wsd: a ckpt_*.pt of a run's stable phase; branch from it and cool down to max_steps
    step_size: int = 1000  # step: multiply the lr by gamma every step_size steps after warmup
    gamma: float = 0.1


@dataclass
class TrainSection:
    max_steps: int = 200
    batch_tokens: int = 8192  # global batch in tokens, independent of the number of processes
    micro_batch: int = 8  # sequences per forward/backward per process; 0 = each process's whole share at once
    seed: int = 1337
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    dtype: str = "auto"  # "auto" (bf16 autocast on GPU, fp32 on CPU) | "float32" | "bfloat16"
    compile: bool = False
    parallel: str = "ddp"  # under torchrun: "ddp" (every rank holds everything) | "fsdp" (sharded; docs/fsdp.md)
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory)
    grad_clip: float = 1.0  # clip the gradient norm to this; 0 = no clipping (the norm is still logged)
    grad_clip_value: float = 0.0  # first clamp each gradient entry to ±this (logged: clamped_fraction); 0 = off
    eval_interval: int = 50
    log_interval: int = 10
    nonfinite: str = "stop"  # what to do on a non-finite loss/gradient: "stop" | "skip" the step
    stop_after: int = 0  # checkpoint and exit after this many steps in this invocation (job time slots); 0 = never
    target_val_loss: float = 0.0  # record the first step/tokens/FLOPs whose val loss is below this; 0 = none
    stop_at_target: bool = False  # end the run there (final.json: stopped_at_target), e.g. Track 3's 3.28


@dataclass
class EvalSection:
    hellaswag: bool = False  # HellaSwag acc / acc_norm (evals/hellaswag.py), logged with the val loss
    hellaswag_interval: int = 0  # every this many steps (a multiple of train.eval_interval); 0 = at the end only
    hellaswag_path: str = ""  # a local hellaswag_val.jsonl (offline); "" = download once into ~/.cache/nanoptim
    hellaswag_limit: int = 0  # the first N examples only (smoke tests); 0 = all 10,042


@dataclass
class LoggingSection:
    run_dir: str = "out/{optimizer.name}{overrides}"  # checkpoints, config.toml, metrics.jsonl, final.json
    wandb: str = "disabled"  # "disabled" | "offline" | "online"
    wandb_project: str = "nanoptim"
    run_name: str = ""  # "" = the run directory's name
    group: str = ""


@dataclass
class CheckpointSection:
    interval: int = 100  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2
    resume: str = "auto"  # "auto": continue from the run dir's last good checkpoint | "never": refuse a used run dir
    allow_config_change: bool = False  # resume a run dir whose saved config differs in a key that matters
    resume_from: str = ""  # a ckpt_*.pt of the run dir to resume from instead of the newest (newer ones set aside)


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))

CHOICES = {
    "model.arch": ("gpt2", "llama", "track3"),
    "data.format": ("auto", "llmc", "nanogpt"),
    "schedule.kind": ("cosine", "wsd", "step", "constant"),
    "schedule.cooldown_shape": ("linear", "sqrt", "cosine"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.dtype": ("auto", "float32", "bfloat16"),
    "train.nonfinite": ("stop", "skip"),
    "train.parallel": ("ddp", "fsdp"),
    "logging.wandb": ("disabled", "offline", "online"),
    "checkpoint.resume": ("auto", "never"),
}

# Keys that may change when a run directory is resumed (they do not change what is being trained).
# Keys a cooldown branch (schedule.cooldown_from) may set differently from the run it branches from.
BRANCH_CHANGES = ("train.max_steps", "schedule.cooldown_from", "schedule.decay_fraction", "schedule.cooldown_shape",
                  "schedule.min_lr_ratio", "train.target_val_loss", "train.stop_at_target")

RESUMABLE_CHANGES = ("logging.", "checkpoint.", "train.log_interval", "train.eval_interval", "train.compile",
                     "train.micro_batch", "train.stop_after", "data.source", "train.parallel",
                     "train.activation_checkpointing")


# ----------------------------------------------------------------------------- typing helpers


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value, tp):
    """Return `value` as type `tp` (int, float, str, bool, list[X], tuple[X, ...], X | None) or raise ConfigError
    naming `key` (also used by optimizers/build.py for the optimizers' constructor arguments)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() == "none" and type(None) in args):
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0])
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} must be a list of {_type_name(item)}, e.g. [0.9, 0.99]")
        return [coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is tuple:
        items = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ConfigError(f"{key} = {value!r} is invalid; it must be a list of {len(items)} "
                              f"{_type_name(items[0])}s, e.g. [0.9, 0.99]")
        return tuple(coerce(f"{key}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, items)))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"config field {key} has unsupported type {tp}")
    raise ConfigError(f"{key} = {value!r} has the wrong type: expected {_type_name(tp)}")


def _section_fields(section_cls) -> dict:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def did_you_mean(name: str, valid) -> str:
    """' (did you mean 'adamw'?)' for the closest valid name, compared case-insensitively ('' if none is close)."""
    valid = list(valid)
    by_lower = {v.lower(): v for v in valid}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def _unknown(what: str, name: str, valid) -> ConfigError:
    return ConfigError(f"unknown {what} {name!r}{did_you_mean(name, valid)}; valid: {', '.join(valid)}")


def _set(cfg: RunConfig, dotted: str, value) -> None:
    if "." not in dotted:
        raise ConfigError(f"override {dotted!r} must look like --section.key=value (sections: "
                          f"{', '.join(SECTIONS)})")
    section_name, key = dotted.split(".", 1)
    if section_name not in SECTIONS:
        raise _unknown("config section", section_name, SECTIONS)
    section = getattr(cfg, section_name)
    if section_name == "optimizer" and key not in ("name", "method"):
        section.settings[key] = value  # checked against the optimizer's constructor by check_optimizer
        return
    fields = _section_fields(type(section))
    if key not in fields:
        raise _unknown(f"key in [{section_name}]", key, list(fields))
    setattr(section, key, coerce(dotted, value, fields[key]))


def _parse_override_value(text: str):
    """A command-line value is read as a TOML value (1e-3, true, [0.9, 0.99], "x"); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _expand(text: str, cfg: RunConfig, where: str) -> str:
    def value(m):
        section, key = m.group(1), m.group(2)
        if section == "optimizer" and key in cfg.optimizer.settings:
            return str(cfg.optimizer.settings[key])
        if not hasattr(cfg, section) or key == "settings" or not hasattr(getattr(cfg, section), key):
            raise ConfigError(f"{where} = {text!r} refers to unknown key {section}.{key}; use e.g. {{optimizer.name}}")
        return str(getattr(getattr(cfg, section), key))

    return re.sub(r"\{(\w+)\.(\w+)\}", value, text)


REPO_DIR = os.path.dirname(os.path.abspath(__file__))


def path_hint(path: str) -> str:
    """For a relative path that does not exist here: where it does exist, relative to the checkout ('' if nowhere),
    so a command run from another directory says what would work."""
    there = os.path.join(REPO_DIR, path)
    if os.path.isabs(path) or os.path.realpath(os.getcwd()) == os.path.realpath(REPO_DIR) or not os.path.exists(there):
        return ""
    return f"; it exists in the checkout as {there}: run from {REPO_DIR}, or pass that path"


def registered_optimizers() -> list[str]:
    from optimizers import OPTIMIZERS  # the registry itself imports no torch

    return list(OPTIMIZERS)


# ----------------------------------------------------------------------------- public API


def load_config(path: str | None = None, overrides: list[str] | tuple = (), full_check: bool = True) -> RunConfig:
    """Read a TOML config (None = configs/tiny_cpu.toml), apply `--section.key=value` overrides, validate.

    full_check=False skips what needs torch (the optimizer recipes' settings and the model size); train.py checks
    them before it writes anything, so run.sh can read a config's directories in a fraction of a second.
    """
    path = path or DEFAULT_CONFIG
    if os.path.isdir(path):
        raise ConfigError(f"config path {path} is a directory; pass a TOML file like configs/tiny_cpu.toml")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist (from {os.getcwd()}){path_hint(path)}"
                          f"{'' if path_hint(path) else '; pass a path like configs/tiny_cpu.toml'}")
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e}); fix the syntax at that line") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; pass a TOML config") from None
    if not raw:  # an empty file would train on built-in defaults that nobody chose
        raise ConfigError(f"{path} is empty (no [section] at all); pass a config such as configs/tiny_cpu.toml")
    # Collect first, apply in order of precedence: [optimizer] keys < [optimizer.<recipe>] < --optimizer.key.
    file_keys, cli_keys, recipes = [], [], {}
    for section_name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: top-level key {section_name!r} must be a [section] table; "
                              f"sections: {', '.join(SECTIONS)}")
        for key, value in table.items():
            if isinstance(value, dict):
                if section_name != "optimizer":
                    raise ConfigError(f"{path}: [{section_name}.{key}] nests too deep; "
                                      f"use keys directly under [{section_name}]")
                recipes.setdefault(key, {}).update(value)
            else:
                file_keys.append((f"{section_name}.{key}", value))
    cli_items = []  # every override in order, for "{overrides}" in run_dir
    for item in overrides:
        if not item.startswith("--") or "=" not in item:
            raise ConfigError(f"cannot read override {item!r}; write it as --section.key=value")
        dotted, text = item[2:].split("=", 1)
        cli_items.append((dotted, _parse_override_value(text)))
        parts = dotted.split(".")
        if len(parts) == 3 and parts[0] == "optimizer":  # --optimizer.<recipe>.<key>=value
            recipes.setdefault(parts[1], {})[parts[2]] = cli_items[-1][1]
        else:
            cli_keys.append(cli_items[-1])
    for recipe, table in recipes.items():
        _check_recipe_table(recipe, table)

    cfg = RunConfig()
    for dotted, value in file_keys + cli_keys:
        if dotted == "optimizer.name":
            _set(cfg, dotted, value)
    for dotted, value in file_keys:
        if dotted != "optimizer.name":
            _set(cfg, dotted, value)
    for key, value in recipes.get(cfg.optimizer.name, {}).items():
        _set(cfg, f"optimizer.{key}", value)
    for dotted, value in cli_keys:
        if dotted != "optimizer.name":
            _set(cfg, dotted, value)
    opt = cfg.optimizer
    if not opt.method:
        if opt.name not in registered_optimizers():
            hint = did_you_mean(opt.name, [*recipes, *registered_optimizers()])
            raise ConfigError(f"optimizer.name = {opt.name!r} is unknown{hint}: neither a recipe of {path} "
                              f"({', '.join(recipes) or 'it has none'}) nor an optimizer "
                              f"({', '.join(registered_optimizers())}); add a table [optimizer.{opt.name}] with a "
                              f"method, or use one of those names")
        opt.method = opt.name
    # "{section.key}" in the run directory or name is replaced by that key's value, so one config file serves every
    # recipe: run_dir = "out/gpt2_124m_{optimizer.name}"; "{overrides}" by the command line's other settings.
    for key in ("run_dir", "run_name", "group"):
        template = getattr(cfg.logging, key)
        template = template.replace("{overrides}", overrides_suffix(template, cli_items))
        setattr(cfg.logging, key, _expand(template, cfg, f"logging.{key}"))
    validate(cfg)
    if full_check:
        check_model_and_optimizer(cfg, {r: t for r, t in recipes.items() if r != opt.name})
    return cfg


def overrides_suffix(template: str, cli_items: list) -> str:
    """What "{overrides}" in logging.run_dir stands for: "" without overrides, else "_" + the command line's
    settings, e.g. `--train.max_steps=50 --optimizer.lr=3e-3` -> "_max_steps50_lr0.003". So the same command always
    resumes the same directory, and a command that changes a setting starts its own. Left out: keys the template
    names itself ({optimizer.name}) and keys that do not change the run (logging.*, checkpoint.*, log/eval
    intervals, ... = RESUMABLE_CHANGES)."""
    named = set(re.findall(r"\{(\w+\.\w+)\}", template))
    kept = [(d, v) for d, v in cli_items if d not in named and not d.startswith(RESUMABLE_CHANGES)]
    if not kept:
        return ""
    last = [d.rsplit(".", 1)[-1] for d, _ in kept]

    def text(v):
        if isinstance(v, str) and re.search(r"ckpt_(\d+)\.pt$", v):  # schedule.cooldown_from: the branch's step
            return str(int(re.search(r"ckpt_(\d+)\.pt$", v).group(1)))
        if isinstance(v, (list, tuple)):
            return "-".join(map(text, v))
        return str(v).lower() if isinstance(v, bool) else str(v)

    last = ["cooldown" if k == "cooldown_from" else k for k in last]
    parts = [f"{k if last.count(k) == 1 else d.replace('.', '-')}{text(v)}" for k, (d, v) in zip(last, kept)]
    suffix = re.sub(r"[^A-Za-z0-9._+-]", "-", "_" + "_".join(parts))
    if len(suffix) > 80:  # a long command line: keep the start readable, a hash keeps it unique
        suffix = suffix[:60] + "_" + hashlib.blake2b(suffix.encode(), digest_size=4).hexdigest()
    return suffix


def _check_recipe_table(recipe: str, table: dict) -> None:
    """The structure of one [optimizer.<recipe>] table (its settings are checked by check_model_and_optimizer)."""
    if not recipe.isidentifier():
        raise ConfigError(f"[optimizer.{recipe}]: a recipe name must be an identifier (letters, digits, _)")
    if "name" in table:
        raise ConfigError(f"[optimizer.{recipe}] must not set name; select it with [optimizer] name = \"{recipe}\"")
    method = table.get("method", recipe)
    if method not in registered_optimizers():
        if "method" in table:
            raise _unknown(f"optimizer in [optimizer.{recipe}] method", str(method), registered_optimizers())
        raise ConfigError(f"[optimizer.{recipe}] is not named like an optimizer, so it needs a method = \"...\" "
                          f"line; optimizers: {', '.join(registered_optimizers())}")


def check_model_and_optimizer(cfg: RunConfig, other_recipes: dict | None = None) -> None:
    """The checks that need torch: the model size, and every recipe against its optimizer's constructor (the chosen
    one with its settings coerced to their types in place)."""
    from model import MODEL_SIZES
    from optimizers import check_recipe
    from optimizers.build import recipe_arguments

    if cfg.model.size not in MODEL_SIZES:
        raise ConfigError(f"model.size = {cfg.model.size!r} is not valid; choose one of: {', '.join(MODEL_SIZES)}")
    for recipe, table in (other_recipes or {}).items():
        check_recipe(table.get("method", recipe), {k: v for k, v in table.items() if k != "method"},
                     f"optimizer.{recipe}")
    opt = cfg.optimizer
    check_recipe(opt.method, opt.settings)
    cls, kwargs, routing = recipe_arguments(opt.method, opt.settings)
    opt.settings = {k: kwargs.get(k, routing.get(k)) for k in opt.settings}


def validate(cfg: RunConfig) -> None:
    """Range and choice checks that need no knowledge of the machine (world size is checked in train.py)."""
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{dotted} = {value!r} is not valid; choose one of: {', '.join(choices)}")
    def positive(dotted, allow_zero=False):
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if isinstance(value, float) and math.isnan(value):  # nan compares false with everything: check it first
            raise ConfigError(f"{dotted} = nan is not a number; give a value {'>= 0' if allow_zero else '> 0'}")
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{dotted} = {value} must be {'>= 0' if allow_zero else '> 0'}")

    for dotted in ("train.max_steps", "train.batch_tokens", "train.log_interval", "schedule.step_size",
                   "train.eval_interval", "data.val_tokens", "model.vocab_size", "checkpoint.keep_last"):
        positive(dotted)
    for dotted in ("model.n_layer", "model.n_head", "model.n_embd", "model.block_size", "train.grad_clip",
                   "train.grad_clip_value", "train.target_val_loss", "eval.hellaswag_interval",
                   "eval.hellaswag_limit",
                   "train.micro_batch",
                   "schedule.warmup_steps", "checkpoint.interval", "train.seed", "train.stop_after"):
        positive(dotted, allow_zero=True)
    if cfg.train.seed >= 2**32:  # numpy's and the data loader's seeds are 32-bit
        raise ConfigError(f"train.seed = {cfg.train.seed} is too large; use a seed in [0, 2**32 - 1]")
    _check_run_dir_path(cfg.logging.run_dir)
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout = {cfg.model.dropout} must be in [0, 1)")
    if cfg.train.parallel == "fsdp" and cfg.optimizer.method == "soap":
        raise ConfigError("train.parallel = 'fsdp' does not support optimizer soap (its Shampoo factors need every "
                          "matrix's whole gradient on every rank); use --train.parallel=ddp")
    s = cfg.schedule
    for key in ("warmup_start_factor", "min_lr_ratio", "decay_fraction", "gamma"):
        value = getattr(s, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"schedule.{key} = {value} must be in [0, 1]")


def _check_run_dir_path(run_dir: str) -> None:
    """The run directory must be a directory path: not empty, not a file, not under a file."""
    if not run_dir.strip():
        raise ConfigError("logging.run_dir is empty; give a directory, e.g. --logging.run_dir=out/my_run")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"logging.run_dir = {run_dir!r} is a file, not a directory; choose another path")
    parent = os.path.dirname(os.path.abspath(run_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"logging.run_dir = {run_dir!r} lies under the file {parent}; choose another path")


def to_dict(cfg: RunConfig) -> dict:
    """The config as plain data (what checkpoints, metrics.jsonl and config.toml hold); the optimizer section flat:
    name, method, then the recipe's settings."""
    d = dataclasses.asdict(cfg)
    d["optimizer"] = {"name": cfg.optimizer.name, "method": cfg.optimizer.method,
                      **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.optimizer.settings.items()}}
    return d


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else ("nan" if math.isnan(v) else repr(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg: RunConfig) -> str:
    """The resolved config as TOML (keys whose value is None, i.e. 'use the default', are left out)."""
    lines = []
    for section_name, table in to_dict(cfg).items():
        lines.append(f"[{section_name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def changed_keys_text(cfg: RunConfig) -> str:
    """One line per section with the keys that differ from the built-in defaults (the whole optimizer recipe), as
    train.py prints at start; the full config is RUN_DIR/config.toml."""
    defaults = to_dict(RunConfig())
    lines = []
    for section_name, table in to_dict(cfg).items():
        keep = [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None and
                (section_name == "optimizer" or v != defaults[section_name].get(k))]
        if keep:
            lines.append(f"  [{section_name}] " + ", ".join(keep))
    return "\n".join(lines)


def differences(a, b, ignore=RESUMABLE_CHANGES) -> list[str]:
    """Keys whose values differ between two configs ("section.key: a -> b"), skipping keys in `ignore`. a and b are
    RunConfigs or to_dict() output (e.g. the config stored in a checkpoint; keys whose value is None count as unset)."""
    out = []

    def plain(c):
        d = to_dict(c) if isinstance(c, RunConfig) else c
        return {sec: {k: (list(v) if isinstance(v, tuple) else v) for k, v in (t or {}).items() if v is not None}
                for sec, t in d.items()}

    da, db, defaults = plain(a), plain(b), plain(RunConfig())
    for d in (da, db):  # checkpoints from before recipes name the method only
        d.setdefault("optimizer", {}).setdefault("method", d["optimizer"].get("name"))
        for section, table in defaults.items():  # a key added since a checkpoint was written: its default
            if section != "optimizer":
                d[section] = {**table, **d.get(section, {})}
    for section in da:
        for key in dict.fromkeys([*da[section], *db.get(section, {})]):  # a recipe may gain or lose a setting
            dotted = f"{section}.{key}"
            if any(dotted.startswith(p) for p in ignore):
                continue
            if da[section].get(key) != db.get(section, {}).get(key):
                out.append(f"{dotted}: {da[section].get(key)!r} -> {db.get(section, {}).get(key)!r}")
    return out
