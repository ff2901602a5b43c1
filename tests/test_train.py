"""train.py end to end on CPU: schedule, bit-exact resume, DDP = one process, run.sh and sample.py."""

import json
import math
import os
import sys

import pytest
import torch
from conftest import ROOT, run_subprocess, train_args, train_losses

from config import load_config
from train import lr_factor
from train import main as train_main


def schedule(**kw):
    cfg = load_config(None, [f"--schedule.{k}={v}" for k, v in kw.items()] + ["--train.max_steps=100"])
    return cfg.schedule


def test_cosine_schedule_values():
    s = schedule(kind="cosine", warmup_steps=10, warmup_start_factor=0.01, min_lr_ratio=0.1)
    assert lr_factor(0, s, 100) == pytest.approx(0.01)
    assert lr_factor(5, s, 100) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(10, s, 100) == pytest.approx(1.0)
    assert lr_factor(55, s, 100) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert lr_factor(100, s, 100) == pytest.approx(0.1)


def test_wsd_and_constant_schedules():
    s = schedule(kind="wsd", warmup_steps=0, decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(0, s, 100) == 1.0 and lr_factor(79, s, 100) == 1.0
    assert lr_factor(80, s, 100) == pytest.approx(1 - 1 / 20)
    assert lr_factor(99, s, 100) == pytest.approx(0.0)
    c = schedule(kind="constant", warmup_steps=4, warmup_start_factor=0.0)
    assert [lr_factor(i, c, 100) for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_training_reduces_loss_and_writes_run_dir(text_data_dir, tmp_path):
    run = str(tmp_path / "run")
    summary = train_main(train_args(text_data_dir, run, "--train.max_steps=12", "--optimizer.lr=3e-3"))
    losses = train_losses(run)
    assert sorted(losses) == list(range(12))
    assert losses[11] < losses[0] - 0.5
    assert math.log(50304) - 1.0 < losses[0] < math.log(50304) + 1.0
    for name in ("config.toml", "metrics.jsonl", "final.json", "ckpt_00000012.pt"):
        assert os.path.exists(os.path.join(run, name)), name
    final = json.load(open(os.path.join(run, "final.json")))
    assert final["steps"] == 12 and final["tokens"] == 12 * 1024 == summary["tokens"]
    assert final["total_flops"] == final["model_flops"] + final["optimizer_flops"] > 0


@pytest.mark.parametrize("optimizer", ["adamw", "lionmuon"])
def test_resume_is_bit_exact(text_data_dir, tmp_path, optimizer):
    """2k steps straight == k steps, stop, resume, k steps: identical losses and parameters (CPU)."""
    extra = ["--train.max_steps=10", f"--optimizer.name={optimizer}", "--model.dropout=0.1",
             "--checkpoint.interval=3"]
    a, b = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train_main(train_args(text_data_dir, a, *extra))
    train_main(train_args(text_data_dir, b, *extra, "--train.stop_after=5"))
    assert max(train_losses(b)) == 4 and not os.path.exists(os.path.join(b, "final.json"))
    train_main(train_args(text_data_dir, b, *extra))
    la, lb = train_losses(a), train_losses(b)
    assert la == lb  # exact float equality, every step
    sa = torch.load(os.path.join(a, "ckpt_00000010.pt"), weights_only=True)
    sb = torch.load(os.path.join(b, "ckpt_00000010.pt"), weights_only=True)
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert json.load(open(os.path.join(a, "final.json")))["total_flops"] == \
        json.load(open(os.path.join(b, "final.json")))["total_flops"]


def test_ddp_two_gloo_processes_match_one_process(text_data_dir, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    extra = ["--train.max_steps=6", "--train.micro_batch=2"]
    train_main(train_args(text_data_dir, one, *extra))
    run_subprocess([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "train.py", *train_args(text_data_dir, two, *extra)])
    l1, l2 = train_losses(one), train_losses(two)
    assert sorted(l1) == sorted(l2) == list(range(6))
    for step in l1:
        assert abs(l1[step] - l2[step]) < 1e-5, (step, l1[step], l2[step])


def test_world_size_check_error(text_data_dir, tmp_path):
    from errors import ConfigError
    with pytest.raises(ConfigError, match="not divisible by train.micro_batch"):
        train_main(train_args(text_data_dir, str(tmp_path / "r"), "--train.micro_batch=3", "--train.max_steps=2"))


def test_run_dir_with_another_config_is_refused(text_data_dir, tmp_path):
    from errors import ConfigError
    run = str(tmp_path / "r")
    train_main(train_args(text_data_dir, run, "--train.max_steps=2"))
    before = sorted(os.listdir(run))
    with pytest.raises(ConfigError, match="holds a different run.*optimizer.lr"):
        train_main(train_args(text_data_dir, run, "--train.max_steps=2", "--optimizer.lr=1e-2"))
    assert sorted(os.listdir(run)) == before


def test_sample_is_deterministic_and_errors_are_one_line(text_data_dir, tmp_path):
    import sample
    run = str(tmp_path / "r")
    train_main(train_args(text_data_dir, run, "--train.max_steps=2"))
    args = ["--ckpt", run, "--prompt", "ROMEO:", "--num_samples", "2", "--max_new_tokens", "12", "--seed", "3"]
    first, second = sample.main(args), sample.main(args)
    assert first == second and all(t.startswith("ROMEO:") for t in first)
    assert sample.main(args[:-1] + ["4"]) != first
    for bad, words in [(["--ckpt", str(tmp_path / "nope")], "does not exist"),
                       (["--ckpt", run, "--prompt", "  "], "prompt is empty"),
                       (["--ckpt", run, "--prompt", "word " * 80], "context is 64")]:
        proc = run_subprocess([sys.executable, "sample.py", *bad], check=False)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_run_sh_default_completes():
    """`bash run.sh` with no arguments: prepares the offline corpus, trains tiny on the CPU, samples."""
    proc = run_subprocess(["bash", "run.sh"], timeout=1500)
    assert "final val loss" in proc.stdout, proc.stdout[-2000:]
    sample_txt = os.path.join(ROOT, "out", "tiny_cpu", "sample.txt")
    assert os.path.getsize(sample_txt) > 100
