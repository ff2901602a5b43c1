"""Config system: TOML → typed dataclasses, overrides, and one-line errors for bad input."""

import glob
import math
import os
import subprocess
import sys

import pytest

from config import differences, load_config, to_toml
from errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_default_config_loads_and_has_expected_values():
    cfg = load_config(None)
    assert cfg.model.size == "tiny" and cfg.optimizer.name == "adamw"
    assert cfg.data.dir == "data/shakespeare"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.toml"))))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.train.max_steps > 0


def test_overrides_are_typed():
    cfg = load_config(None, ["--optimizer.lr=2e-3", "--train.compile=true", "--optimizer.betas=[0.8, 0.99]",
                             "--logging.run_dir=out/x", "--train.max_steps=7"])
    assert cfg.optimizer.settings["lr"] == 2e-3 and cfg.train.compile is True
    assert cfg.optimizer.settings["betas"] == (0.8, 0.99) and cfg.logging.run_dir == "out/x"
    assert cfg.train.max_steps == 7
    assert isinstance(cfg.train.max_steps, int)


def test_int_is_accepted_for_float_but_not_the_reverse():
    lr = load_config(None, ["--optimizer.lr=1"]).optimizer.settings["lr"]
    assert lr == 1.0 and isinstance(lr, float)  # typed by the optimizer's constructor signature
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(None, ["--train.max_steps=1.5"])


@pytest.mark.parametrize("override, words", [
    (["--optimizer.lrr=1e-3"], ["unknown key", "lrr", "did you mean 'lr'"]),
    (["--optimiser.lr=1e-3"], ["unknown config section", "optimiser", "optimizer"]),
    (["--train.max_steps=abc"], ["train.max_steps", "wrong type", "int"]),
    (["--train.compile=3"], ["train.compile", "bool"]),
    (["--optimizer.name=adamx"], ["adamx", "adamw"]),
    (["--model.size=huge"], ["model.size", "gpt2-124m"]),
    (["--model.arch=rwkv"], ["model.arch", "llama"]),
    (["--schedule.kind=linear"], ["schedule.kind", "cosine"]),
    (["--train.max_steps=0"], ["train.max_steps", "> 0"]),
    (["--train.batch_tokens=-5"], ["train.batch_tokens"]),
    (["--schedule.warmup_steps=-1"], ["schedule.warmup_steps", ">= 0"]),
    (["--schedule.min_lr_ratio=2"], ["min_lr_ratio", "[0, 1]"]),
    (["--train.nonfinite=ignore"], ["train.nonfinite", "skip"]),
    (["--logging.wandb=yes"], ["logging.wandb", "offline"]),
    (["maxsteps=3"], ["--section.key=value"]),
    (["--max_steps=3"], ["--section.key=value"]),
])
def test_bad_overrides_give_one_line_errors(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_malformed_toml(tmp_path):
    path = write(tmp_path, "[train]\nmax_steps = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, "[train]\nmax_stpes = 3\n")
    with pytest.raises(ConfigError, match="max_stpes.*did you mean 'max_steps'"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.toml")


def test_config_is_never_executed(tmp_path):
    # A TOML string that looks like code stays a string; nothing is evaluated.
    marker = tmp_path / "pwned"
    path = write(tmp_path, f'[logging]\nrun_name = "__import__(\'os\').system(\'touch {marker}\')"\n')
    cfg = load_config(path)
    assert cfg.logging.run_name.startswith("__import__") and not marker.exists()


def test_to_toml_round_trip(tmp_path):
    cfg = load_config(None, ["--optimizer.lr=1.5e-3", "--logging.run_name=abc \"quoted\""])
    path = write(tmp_path, to_toml(cfg))
    again = load_config(path)
    assert differences(cfg, again, ignore=()) == []
    assert again.logging.run_name == 'abc "quoted"'


def test_inf_round_trips_through_toml(tmp_path):
    path = write(tmp_path, "[schedule]\nmin_lr_ratio = 0.0\n[train]\ngrad_clip = inf\n")
    cfg = load_config(path)
    assert math.isinf(cfg.train.grad_clip)
    assert math.isinf(load_config(write(tmp_path, to_toml(cfg), "d.toml")).train.grad_clip)


def test_differences_ignores_resumable_keys():
    a = load_config(None)
    b = load_config(None, ["--logging.wandb=offline", "--train.eval_interval=7"])
    assert differences(a, b) == []
    c = load_config(None, ["--optimizer.lr=1e-4"])
    assert differences(a, c) == [f"optimizer.lr: {a.optimizer.settings['lr']!r} -> 0.0001"]


PER_METHOD = """
[optimizer]
name = "adamw"
weight_decay = 0.05
[optimizer.adamw]
lr = 3e-3
betas = [0.9, 0.95]
[optimizer.lionmuon]
lr = 1e-2
lion_lr = 3e-4
period = 2
"""


def test_per_optimizer_tables_make_switching_one_line(tmp_path):
    path = write(tmp_path, PER_METHOD)
    a = load_config(path).optimizer
    assert (a.name, a.method, a.settings) == ("adamw", "adamw", dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.05))
    b = load_config(path, ["--optimizer.name=lionmuon"]).optimizer
    assert b.settings == dict(lr=1e-2, lion_lr=3e-4, period=2.0, weight_decay=0.05)
    c = load_config(path, ["--optimizer.name=lionmuon", "--optimizer.lr=5e-3", "--optimizer.lionmuon.lion_lr=1e-4"])
    assert (c.optimizer.settings["lr"], c.optimizer.settings["lion_lr"]) == (5e-3, 1e-4)
    d = load_config(path, ["--optimizer.name=lion"]).optimizer  # no table: the defaults plus the shared keys
    assert (d.method, d.settings) == ("lion", dict(weight_decay=0.05))


RECIPES = """
[optimizer]
name = "p5"
[optimizer.p5]
method = "lionmuon"
period = 5
lion_lr = 3e-4
[optimizer.p2]
method = "lionmuon"
period = 2
[optimizer.lion]
routing = "lionmuon"
adamw_betas = [0.8, 0.999]
"""


def test_recipes_name_settings_of_one_optimizer(tmp_path):
    path = write(tmp_path, RECIPES)
    p5 = load_config(path).optimizer
    assert (p5.name, p5.method, p5.settings) == ("p5", "lionmuon", dict(period=5.0, lion_lr=3e-4))
    p2 = load_config(path, ["--optimizer.name=p2", "--optimizer.lr=2e-3"]).optimizer
    assert (p2.method, p2.settings) == ("lionmuon", dict(period=2.0, lr=2e-3))
    lion = load_config(path, ["--optimizer.name=lion"]).optimizer  # any optimizer may take a backup AdamW
    assert (lion.method, lion.settings["routing"]) == ("lion", "lionmuon")
    # the run dir placeholder is the recipe, so recipes of one optimizer do not share a run dir
    cfg = load_config(path, ["--optimizer.name=p2", "--logging.run_dir=out/{optimizer.name}"])
    assert cfg.logging.run_dir == "out/p2"
    # the resolved config (config.toml of a run dir) loads back as the same run
    again = load_config(write(tmp_path, to_toml(cfg), "saved.toml"))
    assert (again.optimizer.name, again.optimizer.method, again.optimizer.settings) == \
        (cfg.optimizer.name, cfg.optimizer.method, cfg.optimizer.settings)
    assert differences(cfg, again) == []


@pytest.mark.parametrize("extra, words", [
    ("[optimizer.p7]\nperiod = 7\n", ["[optimizer.p7]", "needs a method"]),
    ("[optimizer.p7]\nmethod = \"lionmoun\"\n", ["lionmoun", "did you mean 'lionmuon'"]),
    ("[optimizer.p7]\nmethod = \"lion\"\nperiod = 7\n", ["optimizer.p7.period", "not used by optimizer 'lion'"]),
])
def test_bad_recipes(tmp_path, extra, words):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, RECIPES + extra))
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    with pytest.raises(ConfigError, match="unknown: neither a recipe of .* nor an optimizer"):
        load_config(write(tmp_path, RECIPES), ["--optimizer.name=p9"])


def test_importing_config_does_not_import_torch():
    # run.sh and sweep.py read configs; torch costs seconds to import
    code = ("import sys, config; c = config.load_config(None, full_check=False); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(c.optimizer.method)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "adamw", proc.stderr


@pytest.mark.parametrize("extra, words", [
    ("[optimizer.lionn]\nlr = 1.0\n", ["lionn", "lion"]),
    ("[optimizer.lion]\nlr = -1.0\n", ["lr"]),
    ("[optimizer.muon]\nbetas = [0.9, 0.9]\n", ["betas", "muon"]),
    ("[optimizer.lion]\nname = \"lion\"\n", ["must not set name"]),
])
def test_bad_per_optimizer_tables_are_errors_even_when_not_chosen(tmp_path, extra, words):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, PER_METHOD + extra))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_run_dir_placeholders():
    path = os.path.join(ROOT, "configs", "gpt2_124m.toml")
    assert load_config(path, ["--optimizer.name=lion"]).logging.run_dir == "out/gpt2_124m_lion"
    cfg = load_config(None, ["--logging.run_dir=runs/{optimizer.name}_s{train.seed}"])
    assert cfg.logging.run_dir == "runs/adamw_s1337"
    with pytest.raises(ConfigError, match="unknown key optimizer.nme"):
        load_config(None, ["--logging.run_dir=runs/{optimizer.nme}"])


@pytest.mark.parametrize("override, words", [
    (["--train.grad_clip=nan"], ["train.grad_clip", "not a number"]),
    (["--optimizer.lr=inf"], ["optimizer.lr", "not finite"]),
    (["--optimizer.name=muon", "--optimizer.adamw_lr=inf"], ["optimizer.adamw_lr", "not finite"]),
    (["--train.seed=4294967296"], ["train.seed", "2**32"]),
    (["--logging.run_dir="], ["logging.run_dir is empty"]),
])
def test_values_that_used_to_pass_silently(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_run_dir_and_config_paths_must_be_what_they_claim(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        load_config(None, [f"--logging.run_dir={a_file}"])
    with pytest.raises(ConfigError, match="lies under the file"):
        load_config(None, [f"--logging.run_dir={a_file}/sub/run"])
    with pytest.raises(ConfigError, match="is a directory; pass a TOML file"):
        load_config(str(tmp_path))
    with pytest.raises(ConfigError, match="is empty"):
        load_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match=r"does not exist \(from "):
        load_config(str(tmp_path / "nope.toml"))
