"""train.py end to end on CPU: schedule, bit-exact resume, DDP = one process, run.sh and sample.py."""

import json
import math
import os
import sys
import types

import pytest
import torch
from conftest import ROOT, run_subprocess, train_args, train_losses

from config import load_config
from schedule import lr_factor
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


def test_wsd_cooldown_shapes_and_the_step_schedule():
    """The cooldown shapes at a quarter of a 20-step cooldown to 0.1 (t = 5/20), and StepLR after warmup."""
    for shape, expected in (("linear", 0.75), ("sqrt", 0.5), ("cosine", 0.5 * (1 + math.cos(math.pi / 4)))):
        s = schedule(kind="wsd", warmup_steps=0, decay_fraction=0.2, min_lr_ratio=0.1, cooldown_shape=shape)
        assert lr_factor(79, s, 100) == 1.0 and lr_factor(99, s, 100) == pytest.approx(0.1)
        assert lr_factor(84, s, 100) == pytest.approx(0.1 + 0.9 * expected), shape
    s = schedule(kind="step", warmup_steps=2, warmup_start_factor=0.5, step_size=3, gamma=0.5)
    assert [lr_factor(i, s, 100) for i in range(9)] == [0.5, 0.75, 1, 1, 1, 0.5, 0.5, 0.5, 0.25]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_micro_batch_is_an_upper_bound_and_the_world_size_must_divide_the_batch():
    """One config runs on 1, 2 and 4 processes: micro_batch becomes the largest divisor of each process's share
    that fits; only a global batch that cannot be split over the processes is an error."""
    from errors import ConfigError
    from train import batch_layout

    tc = types.SimpleNamespace(batch_tokens=2048, micro_batch=8)
    assert [batch_layout(tc, 256, n) for n in (1, 2, 4, 8)] == [(8, 1), (4, 1), (2, 1), (1, 1)]
    assert batch_layout(types.SimpleNamespace(batch_tokens=2048, micro_batch=3), 256, 1) == (2, 4)
    assert batch_layout(types.SimpleNamespace(batch_tokens=2048, micro_batch=0), 256, 2) == (4, 1)
    with pytest.raises(ConfigError, match="cannot be split evenly over 3 processes; use a multiple of 768"):
        batch_layout(tc, 256, 3)


@pytest.mark.slow
def test_run_dir_with_another_config_is_refused(text_data_dir, tmp_path):
    from errors import ConfigError
    run = str(tmp_path / "r")
    train_main(train_args(text_data_dir, run, "--train.max_steps=2"))
    before = sorted(os.listdir(run))
    with pytest.raises(ConfigError, match="holds a different run.*optimizer.lr"):
        train_main(train_args(text_data_dir, run, "--train.max_steps=2", "--optimizer.lr=1e-2"))
    assert sorted(os.listdir(run)) == before


@pytest.mark.slow
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


PLUGIN = '''
"""SGD with heavy-ball momentum: a new optimizer in one file, as a contributor would write it."""
import torch

from optimizers.base import HybridOptimizer, check_number


class SGDMomentum(HybridOptimizer):
    """SGD with momentum: b ← μ·b + g;  p ← p·(1 − lr·wd) − lr·b.

    Args:
        lr: learning rate (0.1).
        momentum: μ (0.9).
        weight_decay: decoupled weight decay (0.0).
    """

    flops_per_element = 4

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0):
        check_number("lr", lr, 0, lo_open=True)
        check_number("momentum", momentum, 0, 1)
        check_number("weight_decay", weight_decay, 0)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    def _step(self, groups):
        for group, params, grads, bufs in self._groups_with_grads(groups, "momentum_buffer"):
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, grads)
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
'''


@pytest.mark.slow
def test_a_new_optimizer_is_one_file_and_one_registry_line(text_data_dir, tmp_path, monkeypatch):
    """An optimizer defined outside the package, registered with one call, trains from a TOML recipe; its settings
    are checked against its constructor and its FLOPs come from its class attribute. No other file is touched."""
    import optimizers
    from errors import ConfigError

    (tmp_path / "sgd_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(optimizers.OPTIMIZERS, "sgd_momentum", "sgd_plugin:SGDMomentum")  # = optimizers.register
    config = tmp_path / "sgd.toml"
    config.write_text(open(os.path.join(ROOT, "configs", "tiny_cpu.toml")).read().replace(
        'name = "adamw"', 'name = "sgd_fast"\n\n[optimizer.sgd_fast]\nmethod = "sgd_momentum"\nlr = 0.05\n'
                          'momentum = 0.8\nweight_decay = 0.1', 1))
    run = str(tmp_path / "run")
    summary = train_main([str(config), *train_args(text_data_dir, run, "--train.max_steps=2")[1:]])
    assert sorted(train_losses(run)) == [0, 1]
    saved = open(os.path.join(run, "config.toml")).read()
    assert 'name = "sgd_fast"' in saved and 'method = "sgd_momentum"' in saved and "momentum = 0.8" in saved
    from model import GPT, model_config
    n = GPT(model_config("gpt2", "tiny", n_layer=2, n_head=2, n_embd=64, block_size=64)).param_counts()["total"]
    assert summary["optimizer_flops"] == 2 * 4 * n  # two steps × flops_per_element × every parameter
    with pytest.raises(ConfigError, match="unknown key optimizer.nesterov.*sgd_momentum.*valid: lr, momentum"):
        train_main([str(config), *train_args(text_data_dir, str(tmp_path / "r2"),
                                             "--optimizer.sgd_fast.nesterov=1")[1:]])


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing_and_wall_time_adds_up(text_data_dir, tmp_path, capsys):
    """A rerun of a finished run says so and writes nothing (final.json's wall_s is not replaced by the rerun's few
    seconds); a run split over two invocations reports the wall time of both."""
    import time as _time

    run = str(tmp_path / "r")
    extra = ["--train.max_steps=4", "--checkpoint.interval=2"]
    train_main(train_args(text_data_dir, run, *extra, "--train.stop_after=2"))
    t0 = _time.time()
    summary = train_main(train_args(text_data_dir, run, *extra))
    second_call = _time.time() - t0
    first = json.load(open(os.path.join(run, "final.json")))
    assert first == summary and first["wall_s"] > second_call  # includes the first invocation
    files = {f: open(os.path.join(run, f), "rb").read() for f in os.listdir(run) if f != ".lock"}
    capsys.readouterr()
    assert train_main(train_args(text_data_dir, run, *extra)) == first
    assert "holds a finished run" in capsys.readouterr().out
    assert {f: open(os.path.join(run, f), "rb").read() for f in files} == files  # nothing rewritten


@pytest.mark.slow
def test_target_val_loss_stop_at_target_grad_clip_value_and_code_version(text_data_dir, tmp_path, capsys):
    """train.target_val_loss records the first eval below it (step, tokens, FLOPs) and stop_at_target ends the run
    there (a rerun says it is finished); grad_clip_value clamps entries and logs the clamped fraction; the code's git
    commit is in metrics.jsonl, config.toml, the checkpoint and final.json."""
    from metrics import code_version, read_records

    free = str(tmp_path / "free")
    train_main(train_args(text_data_dir, free, "--train.max_steps=8", "--train.eval_interval=2"))
    evals = {r["step"]: r["val_loss"] for r in read_records(os.path.join(free, "metrics.jsonl"))
             if r["kind"] == "eval"}
    target = (evals[2] + evals[4]) / 2  # reached first at step 4
    run = str(tmp_path / "target")
    extra = ["--train.max_steps=8", "--train.eval_interval=2", f"--train.target_val_loss={target}",
             "--train.stop_at_target=true", "--train.grad_clip_value=0.001"]
    summary = train_main(train_args(text_data_dir, run, *extra))
    assert summary["steps"] == 4 and summary["stopped_at_target"] and summary["target_reached"]["step"] == 4
    assert summary["target_reached"]["tokens"] == 4 * 1024 and summary["target_reached"]["val_loss"] < target
    assert summary["target_reached"]["val_loss"] != evals[4]  # the clamp changed the gradients, hence the run
    records = read_records(os.path.join(run, "metrics.jsonl"))
    assert [r["step"] for r in records if r.get("reached_target")] == [4]
    clamped = [r["clamped_fraction"] for r in records if r["kind"] == "train"]
    assert len(clamped) == 4 and all(0 < c < 1 for c in clamped)
    code = code_version()
    assert code["commit"] and records[0]["code"] == code == summary["code"]
    assert f"# code commit: {code['commit']}" in open(os.path.join(run, "config.toml")).read()
    assert torch.load(os.path.join(run, "ckpt_00000004.pt"), weights_only=True)["code"] == code
    capsys.readouterr()
    assert train_main(train_args(text_data_dir, run, *extra)) == json.load(open(os.path.join(run, "final.json")))
    assert "holds a finished run" in capsys.readouterr().out


@pytest.mark.slow
def test_a_cooldown_branch_continues_a_stable_phase_checkpoint_in_its_own_run_dir(text_data_dir, tmp_path):
    """schedule.cooldown_from: one wsd run, a branch from its step-8 checkpoint cooling down to step 12 in its own
    directory; the branch's history up to the branch point is the source's, its step-8 loss (before the first
    cooldown update) equals the source's bit for bit, its lr follows the cooldown, and its counters continue."""
    from errors import ConfigError
    from metrics import read_records

    source = str(tmp_path / "source")
    base = ["--schedule.kind=wsd", "--schedule.warmup_steps=2", "--schedule.decay_fraction=0.5",
            "--schedule.min_lr_ratio=0.0", "--checkpoint.interval=4", "--train.eval_interval=4"]
    train_main(train_args(text_data_dir, source, *base, "--train.max_steps=20", "--checkpoint.keep_last=5"))
    branch = str(tmp_path / "branch")
    point = os.path.join(source, "ckpt_00000008.pt")
    summary = train_main(train_args(text_data_dir, branch, *base, "--train.max_steps=12",
                                    f"--schedule.cooldown_from={point}", "--schedule.cooldown_shape=sqrt"))
    src, br = (read_records(os.path.join(d, "metrics.jsonl")) for d in (source, branch))
    train_src = {r["step"]: r for r in src if r["kind"] == "train"}
    train_br = {r["step"]: r for r in br if r["kind"] == "train"}
    assert sorted(train_br) == list(range(12))
    assert all(train_br[i]["loss"] == train_src[i]["loss"] for i in range(9))  # copied history + the branch point
    assert train_br[9]["loss"] != train_src[9]["loss"]  # the cooldown changed the update of step 8
    base_lr = train_src[5]["lr"]  # stable phase: factor 1
    for step in (8, 9, 11):  # sqrt cooldown over steps 8..12: 1 - sqrt((step - 8 + 1) / 4)
        assert train_br[step]["lr"] == pytest.approx(base_lr * (1 - math.sqrt((step - 7) / 4)))
    assert summary["tokens"] == 12 * 1024 and summary["steps"] == 12
    assert os.path.exists(os.path.join(source, "ckpt_00000020.pt"))  # the source is untouched
    with pytest.raises(ConfigError, match="not in the stable phase"):
        train_main(train_args(text_data_dir, str(tmp_path / "late"), *base, "--train.max_steps=24",
                              f"--schedule.cooldown_from={os.path.join(source, 'ckpt_00000012.pt')}"))
    with pytest.raises(ConfigError, match="must keep the run's settings.*optimizer.lr"):
        train_main(train_args(text_data_dir, str(tmp_path / "other"), *base, "--train.max_steps=12",
                              f"--schedule.cooldown_from={point}", "--optimizer.lr=0.01"))
    with pytest.raises(ConfigError, match="needs schedule.kind = 'wsd'"):
        train_main(train_args(text_data_dir, str(tmp_path / "cos"), "--train.max_steps=12",
                              f"--schedule.cooldown_from={point}"))
