"""plan.py (`python train.py CONFIG --plan`): every shipped config and recipe is planned without data or a GPU, the
numbers are the model's and optimizer's own, and a run that cannot fit is refused naming the knob."""

import glob
import os

import pytest
from conftest import ROOT

from config import load_config
from errors import ConfigError
from flops import model_flops_per_token
from train import main as train_main

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.toml")))


def recipes(path):
    """Every recipe of the config (sorted); for the paper-scale configs, whose recipes tests/test_paper_configs.py
    plans one by one, only the one the config selects."""
    import tomllib

    section = tomllib.load(open(path, "rb")).get("optimizer", {})
    if os.path.basename(path) in ("gpt2_355m.toml", "gpt2_720m.toml"):
        return [section.get("name", "adamw")]
    return sorted(section.keys() - {"name"}) or ["adamw"]


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_shipped_config_and_recipe_is_planned(path, capsys):
    for recipe in recipes(path):
        lines = train_main([path, f"--optimizer.name={recipe}", "--plan"])
        assert [line.split()[0] for line in lines] == ["model", "tokens", "FLOPs", "batch", "memory", "time"]
    assert "GB of 80 (h100)" in capsys.readouterr().out


def test_plan_numbers_are_the_run_numbers():
    """Tokens, FLOPs and the Newton–Schulz charge agree with what training counts (flops.py, the optimizer)."""
    from model import model_config
    from plan import OPTIMIZER_PLAN_STEPS, PlanOptions, optimizer_on_meta, plan
    from train import batch_layout

    cfg = load_config(os.path.join(ROOT, "configs", "gpt2_124m.toml"), ["--optimizer.name=muon"])
    mcfg = model_config("gpt2", "gpt2-124m", block_size=512)
    lines = plan(cfg, mcfg, PlanOptions(gpus=8), batch_layout)
    assert "64,000 steps × 16,384 = 1.05B tokens" in lines[1]
    assert f"model {model_flops_per_token(mcfg):.3e} per token" in lines[2]
    state, flops = optimizer_on_meta(cfg, mcfg)
    # Muon: the NS matmuls of the 124M hidden matrices, 1.522e12 per step (docs/optimizers.md), every step
    assert 1.52e12 < flops < 1.54e12 and OPTIMIZER_PLAN_STEPS >= 2  # + the elementwise estimate
    assert "8 GPUs: 4 × 1" in lines[3]
    # state: one momentum per hidden matrix + AdamW's two moments for the rest, fp32
    assert 0.6e9 < state < 0.7e9


def test_a_run_that_cannot_fit_is_refused_with_the_knob(capsys):
    path = os.path.join(ROOT, "configs", "gpt2_124m.toml")
    with pytest.raises(ConfigError, match=r"more than the a100-40gb's 40 GB; set --train.micro_batch=32"):
        train_main([path, "--plan", "--plan.gpu=a100-40gb", "--plan.gpus=1", "--model.block_size=1024",
                    "--train.batch_tokens=524288", "--train.micro_batch=64"])
    with pytest.raises(ConfigError, match="use one of: a100, a100-40gb, h100"):
        train_main([path, "--plan", "--plan.gpu=v100"])
    with pytest.raises(ConfigError, match="--plan.mfu=2 is not valid"):
        train_main([path, "--plan", "--plan.mfu=2"])


def test_fsdp_plan_shards_weights_gradients_and_state():
    path = os.path.join(ROOT, "configs", "gpt2_124m.toml")
    ddp = train_main([path, "--plan", "--plan.gpus=4", "--optimizer.name=adamw"])[4]
    fsdp = train_main([path, "--plan", "--plan.gpus=4", "--optimizer.name=adamw", "--train.parallel=fsdp"])[4]
    assert "weights 0.50 GB" in ddp and "DDP buckets" in ddp
    assert "(fsdp: sharded 1/N)" in fsdp and "weights 0.12 GB" in fsdp and "DDP buckets" not in fsdp
