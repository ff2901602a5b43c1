"""The configs of the papers' larger scales (configs/gpt2_355m.toml, configs/gpt2_720m.toml) and their LLaMA variants
(`--model.arch=llama` on each GPT-2 config; the LionMuon paper's LLaMA runs change nothing else, see below): every
recipe loads, the model has the paper's shape and size, the batch and run length are the paper's, and the planner
accepts every recipe on 8 H100s. Nothing big is built: parameter counts come from flops.n_params.

Sources of the pinned numbers: brain-lab-research/lion-muon scripts/train_fineweb_355m.sh, scripts/train_fineweb_720m.sh
(commit b7960be) and exps_355m/*/summary.json (docs/optimizers.md §6.4), epfml/llm-optimizer-benchmark
scripts/720m/{ademamix,soap}.sh.
"""

import os
import tomllib

import pytest
from conftest import ROOT

from config import load_config
from flops import lionmuon_paper_n_params, n_params
from model import model_config

CONFIGS = os.path.join(ROOT, "configs")
RECIPES = ["adamw", "lion", "signum", "muon", "olion", "lionmuon", "signmuon", "leo", "normuon", "ademamix", "soap"]

# What each scale of the LionMuon paper is (lion-muon scripts; docs/optimizers.md §6.4).
PAPER = {
    "gpt2_355m": dict(
        size="gpt2-355m", n_layer=24, n_head=16, n_embd=1024,  # N_LAYER=24 N_HEAD=16 N_EMBD=1024
        seq=1024, sequences=64 * 8,  # SEQ_LEN=1024, BATCH_SIZE=64 × ACC_STEPS=8
        steps=15650, warmup=1500, grad_clip=0.5, eval_interval=500,  # ITERATIONS, WARMUP, --grad_clip, EVAL_INTERVAL
        paper_params=354_549_760,  # lion-muon plot_results.py compute_flops: 24·12·d² + V·d + T·d
        llama_params=(355e6, 365e6),  # ours: SwiGLU hidden 2816 (8d/3 rounded up to 256); the paper has no 355M LLaMA
    ),
    "gpt2_720m": dict(
        size="gpt2-720m", n_layer=12, n_head=16, n_embd=2048,  # N_LAYER=12 N_HEAD=16 N_EMBD=2048
        seq=512, sequences=64 * 31,  # SEQ_LEN=512, BATCH_SIZE=64 × ACC_STEPS=31
        steps=14000, warmup=100, grad_clip=0.1, eval_interval=250,  # train_fineweb_720m.sh at b7960be
        paper_params=708_050_944,  # "Param count: ~709M" (train_fineweb_720m.sh)
        llama_params=(715e6, 725e6),  # ours: SwiGLU hidden 5632; the paper has no 720M LLaMA
    ),
}

# Per-recipe values taken from the papers' code at these scales ("ours" values are not pinned here: their rules are
# in the configs' comments). lion-muon passes ηM as --muon_lr_factor, ηL as --sign_lr and the backup AdamW lr as --lr.
PUBLISHED = {
    "gpt2_355m": {  # scripts/train_fineweb_355m.sh, confirmed by exps_355m/*/summary.json "args"
        "adamw": dict(lr=0.005, betas=[0.8, 0.999]),  # sic (summary.json), not the 3.75e-4 its comment implies
        "lion": dict(lr=3.75e-5, betas=[0.9, 0.99], adamw_lr=7.5e-4),
        "muon": dict(lr=7.5e-4, momentum=0.95, nesterov=True, adamw_lr=7.5e-4),  # the legacy sign_muon run
        "lionmuon": dict(lr=7.5e-4, lion_lr=3.75e-5, betas=[0.9, 0.99], period=2, adamw_lr=7.5e-4),
        "signmuon": dict(lr=1.5e-3, lion_lr=3.75e-5, momentum=0.9, period=2, adamw_lr=7.5e-4),
    },
    "gpt2_720m": {  # scripts/train_fineweb_720m.sh at b7960be (lrs from exps_tuning_720m)
        "adamw": dict(lr=1e-3, betas=[0.9, 0.999]),
        "lion": dict(lr=1.875e-5, betas=[0.9, 0.99], adamw_lr=3.75e-4),
        "signum": dict(lr=3e-5, momentum=0.9, adamw_lr=3e-3),  # signum_fixed
        "muon": dict(lr=3e-3, momentum=0.9, nesterov=False, adamw_lr=3e-3),  # muon_fixed
        "lionmuon": dict(lr=3e-3, lion_lr=1e-5, betas=[0.9, 0.99], period=2, adamw_lr=3e-3),
        "signmuon": dict(lr=3e-3, lion_lr=3e-5, momentum=0.9, period=2, adamw_lr=3e-3),
        # epfml/llm-optimizer-benchmark scripts/720m/ademamix.sh and soap.sh
        "ademamix": dict(lr=1e-3, betas=[0.9, 0.999, 0.999], alpha=8.0),
        "soap": dict(lr=1e-3, betas=[0.95, 0.95], precondition_frequency=10),
    },
}


def path_of(name: str) -> str:
    return os.path.join(CONFIGS, f"{name}.toml")


def recipes_of(name: str) -> list[str]:
    with open(path_of(name), "rb") as f:
        return sorted(k for k, v in tomllib.load(f)["optimizer"].items() if isinstance(v, dict))


def model_of(cfg):
    """The GPTConfig train.py builds from a loaded config (as train.print_plan does)."""
    m = cfg.model
    return model_config(m.arch, m.size, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                        vocab_size=m.vocab_size, bias=m.bias, dropout=m.dropout)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_every_method_has_a_recipe(name):
    assert recipes_of(name) == sorted(RECIPES)


@pytest.mark.parametrize("name", sorted(PAPER))
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_loads(name, recipe):
    cfg = load_config(path_of(name), ["--optimizer.name=" + recipe])
    assert cfg.optimizer.method == recipe
    assert cfg.logging.run_dir == f"out/{name}_{recipe}"
    assert cfg.data.source.split()[0] == "fineweb" and cfg.data.dir.startswith("data/fineweb")


@pytest.mark.parametrize("name", sorted(PAPER))
def test_model_is_the_papers(name):
    paper, cfg = PAPER[name], load_config(path_of(name))
    mcfg = model_of(cfg)
    assert (cfg.model.arch, cfg.model.size) == ("gpt2", paper["size"])
    assert (mcfg.n_layer, mcfg.n_head, mcfg.n_embd, mcfg.block_size) == (
        paper["n_layer"], paper["n_head"], paper["n_embd"], paper["seq"])
    assert (mcfg.vocab_size, mcfg.bias, mcfg.dropout) == (50304, False, 0.0)
    # the paper's count (no norm weights) is reproduced by flops.py's copy of its formula
    assert lionmuon_paper_n_params(mcfg.n_layer, mcfg.n_embd, mcfg.block_size, mcfg.vocab_size) == paper["paper_params"]
    # ours adds the LayerNorm weights (2 per layer + ln_f): within 0.1 % of the paper's
    total = n_params(mcfg)["total"]
    assert total - paper["paper_params"] == (2 * mcfg.n_layer + 1) * mcfg.n_embd
    assert abs(total / paper["paper_params"] - 1) < 1e-3


@pytest.mark.parametrize("name", sorted(PAPER))
def test_batch_and_length_are_the_papers(name):
    paper, cfg = PAPER[name], load_config(path_of(name))
    tc, sc = cfg.train, cfg.schedule
    assert tc.batch_tokens == paper["sequences"] * paper["seq"]  # 524,288 (355M), 1,015,808 (720M)
    assert tc.max_steps == paper["steps"]
    assert (sc.kind, sc.warmup_steps, sc.warmup_start_factor, sc.min_lr_ratio) == ("cosine", paper["warmup"], 0.01, 0.0)
    assert tc.grad_clip == paper["grad_clip"] and tc.eval_interval == paper["eval_interval"]
    assert tc.compile
    tokens = tc.max_steps * tc.batch_tokens
    # 355M: 8.21B tokens, "~23 TPP" (1.16× Chinchilla); 720M: 14.2B tokens, "~20 tokens/param" (the scripts' comments)
    assert tokens == {"gpt2_355m": 8_205_107_200, "gpt2_720m": 14_221_312_000}[name]
    per_param = tokens / n_params(model_of(cfg))["total"]
    assert {"gpt2_355m": 23.0 < per_param < 23.3, "gpt2_720m": 20.0 < per_param < 20.2}[name]
    assert cfg.data.val_tokens == 32 * 64 * paper["seq"]  # --eval_batches 32 of BATCH_SIZE=64


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_settings(name):
    for recipe, expected in PUBLISHED[name].items():
        settings = load_config(path_of(name), ["--optimizer.name=" + recipe]).optimizer.settings
        got = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items() if k in expected}
        assert got == pytest.approx(expected), recipe
        if "adamw_lr" in expected:  # the paper's backup AdamW: betas (0.8, 0.999), wd 0.1 (lion-muon src/main.py)
            assert (list(settings["adamw_betas"]), settings["adamw_weight_decay"]) == ([0.8, 0.999], 0.1), recipe


@pytest.mark.parametrize("name", sorted(PAPER))
def test_ademamix_warmups_are_the_run(name):
    cfg = load_config(path_of(name), ["--optimizer.name=ademamix"])
    assert cfg.optimizer.settings["alpha_warmup"] == cfg.optimizer.settings["beta3_warmup"] == cfg.train.max_steps


def test_llama_variant_is_an_override():
    """The LionMuon paper's LLaMA runs (124M only) use the GPT runs' settings exactly (lion-muon
    scripts/train_baselines.sh: one COMMON_ARGS for --model base and llama; exps/fw_{base,llama}_*/summary.json
    differ only in "model"), so `--model.arch=llama` on the GPT-2 config is the LLaMA config."""
    for name, expected in [("gpt2_124m", (123e6, 124e6)), *[(n, p["llama_params"]) for n, p in PAPER.items()]]:
        gpt = load_config(path_of(name), ["--optimizer.name=lionmuon"])
        llama = load_config(path_of(name), ["--optimizer.name=lionmuon", "--model.arch=llama"])
        assert llama.model.arch == "llama" and llama.logging.run_dir == gpt.logging.run_dir + "_archllama"
        assert (llama.train, llama.schedule, llama.optimizer) == (gpt.train, gpt.schedule, gpt.optimizer)
        mcfg = model_of(llama)
        assert mcfg.mlp_hidden == {"gpt2_124m": 2048, "gpt2_355m": 2816, "gpt2_720m": 5632}[name]
        assert expected[0] < n_params(mcfg)["total"] < expected[1], name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
@pytest.mark.parametrize("recipe", RECIPES)
def test_the_planner_accepts_every_recipe(name, recipe, capsys):
    """8 H100s (the planner's default): the micro-batch fits 80 GB for every recipe, SOAP's state included."""
    from train import main as train_main

    lines = train_main([path_of(name), "--optimizer.name=" + recipe, "--plan"])
    tokens = {"gpt2_355m": "8.21B tokens", "gpt2_720m": "14.2B tokens"}[name]
    assert tokens in lines[1] and "8 GPUs" in lines[3] and "GB of 80 (h100)" in lines[4]
    capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2_124m", *sorted(PAPER)])
def test_the_planner_accepts_the_llama_variant(name, capsys):
    from train import main as train_main

    for recipe in ("adamw", "lionmuon", "soap"):  # the largest optimizer state (SOAP) and the paper's method
        lines = train_main([path_of(name), "--optimizer.name=" + recipe, "--model.arch=llama", "--plan"])
        assert lines[0].startswith("model      llama") and "GB of 80 (h100)" in lines[4]
    capsys.readouterr()
