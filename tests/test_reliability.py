"""Reliability: crashes, faults and bad input, each tried for real against the CLI entry points (CPU, gloo).

Faults are injected without hooks in the product code: tests/reliability_faults/sitecustomize.py wraps a few
library calls (torch.save, os.replace, os.remove, open, clip_grad_norm_) in the train.py processes, as described by
the NANOPTIM_TEST_FAULTS environment variable. Every process runs with OMP_NUM_THREADS=1, so CPU runs are
bit-for-bit reproducible and "resumed == uninterrupted" is checked with exact equality.

Single-process train.py/sample.py launches are forked from a warm interpreter (tests/reliability_faults/warm_cli.py:
a separate process per launch, SIGKILLed for real, without re-importing torch each time); the reference run,
run.sh, torchrun and the external-SIGKILL launches are ordinary cold subprocesses, so every warm chain is also
compared against a cold run.

The model is deliberately tiny (2 layers, width 32, context 32, a 128-token byte vocabulary over tinyshakespeare)
so that a launch costs its Python start-up and little else. docs/reliability.md lists what each test proves.
"""

import contextlib
import hashlib
import json
import math
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import ROOT, corpus_text, run_subprocess, write_splits

import checkpoint as ckpt
from errors import CheckpointError

pytestmark = pytest.mark.slow  # subprocess launches: minutes in all (pytest -m "not slow" skips them)

FAULT_SITE = os.path.join(ROOT, "tests", "reliability_faults")
MAX_STEPS = 30
SMALL = ["--model.n_layer=2", "--model.n_head=2", "--model.n_embd=32", "--model.block_size=32",
         "--model.vocab_size=128"]


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory):
    """tinyshakespeare as bytes (ids < 128): 200k train tokens, 20k val tokens."""
    tokens = np.frombuffer(corpus_text().encode("ascii", "replace"), dtype=np.uint8).astype(np.uint16)
    return write_splits(tmp_path_factory.mktemp("bytes"), "bytes", tokens, 200_000, 20_000)


def args(data_dir, run_dir, *extra):
    """train.py / run.sh arguments of the standard tiny run (30 steps, a checkpoint every 2, keep the last 2)."""
    return ["configs/tiny_cpu.toml", *SMALL, f"--data.dir={data_dir}", f"--logging.run_dir={run_dir}",
            "--data.val_tokens=512", "--train.batch_tokens=512", "--train.micro_batch=8", "--train.log_interval=1",
            "--train.eval_interval=4", f"--train.max_steps={MAX_STEPS}", "--schedule.warmup_steps=2",
            "--optimizer.lr=1e-2", "--checkpoint.interval=2", "--checkpoint.keep_last=2", "--model.dropout=0.1",
            *extra]


def env(faults=None, **extra):
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
             PYTHONPATH=os.pathsep.join([FAULT_SITE, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    e.pop("NANOPTIM_TEST_FAULTS", None)
    if faults:
        e["NANOPTIM_TEST_FAULTS"] = json.dumps(faults)
    e.update(extra)
    return e


def run(cmd, faults=None, timeout=300, **env_extra):
    """conftest.run_subprocess with this file's environment (fault hooks on PYTHONPATH), never raising on failure."""
    return run_subprocess(cmd, check=False, timeout=timeout, env=env(faults, **env_extra))


class WarmServer:
    """The warm_cli.py fork server: one forked process per launch (see its docstring)."""

    def __init__(self):
        self.proc, self.n = None, 0
        self.logs = None

    def run(self, argv, faults=None, timeout=300, **env_extra):
        if self.proc is None:
            import tempfile

            self.logs = tempfile.mkdtemp(prefix="warm_cli_")
            self.proc = subprocess.Popen([sys.executable, os.path.join(FAULT_SITE, "warm_cli.py")], cwd=ROOT,
                                         env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         start_new_session=True)
        self.n += 1
        out, err = os.path.join(self.logs, f"{self.n}.out"), os.path.join(self.logs, f"{self.n}.err")
        self.proc.stdin.write(json.dumps(dict(argv=list(argv), stdout=out, stderr=err, env=env_extra,
                                              faults=faults)) + "\n")
        self.proc.stdin.flush()
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.close()
            raise AssertionError(f"timed out after {timeout}s: {' '.join(argv)}\n{open(err).read()[-3000:]}")
        code = json.loads(self.proc.stdout.readline())["code"]
        return subprocess.CompletedProcess(argv, code, open(out).read(), open(err).read())

    def close(self):
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            shutil.rmtree(self.logs, ignore_errors=True)
            self.proc = None


WARM = WarmServer()


@pytest.fixture(scope="module", autouse=True)
def _close_warm_server():
    yield
    WARM.close()


def train(data_dir, run_dir, *extra, faults=None):
    """One train.py launch (warm-forked)."""
    return WARM.run(["train.py", *args(data_dir, run_dir, *extra)], faults=faults)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def records(run_dir):
    """(train losses {step: loss}, eval losses {step: val_loss}) from metrics.jsonl."""
    train_l, eval_l = {}, {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("kind") == "train":
                assert r["step"] not in train_l, f"step {r['step']} logged twice"
                train_l[r["step"]] = r["loss"]
            elif r.get("kind") == "eval":
                eval_l[r["step"]] = r["val_loss"]
    return train_l, eval_l


def final_state(run_dir):
    return ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir, MAX_STEPS))


def assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)  # NaN == NaN for this purpose


def assert_bit_identical(run_dir, ref_dir):
    """Every train and eval loss, the final weights and optimizer state, and the counters equal, bit for bit."""
    assert records(run_dir) == records(ref_dir)
    a, b = final_state(run_dir), final_state(ref_dir)
    assert_same_tensors(a["model"], b["model"], "model")
    assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer")
    fa, fb = (json.load(open(os.path.join(d, "final.json"))) for d in (run_dir, ref_dir))
    for key in ("steps", "best_val_loss", "final_val_loss", "tokens", "model_flops", "optimizer_flops", "total_flops"):
        assert fa[key] == fb[key], key


def assert_clean_and_verified(run_dir):
    """No torn-write leftovers, and every checkpoint present passes its checksum."""
    names = os.listdir(run_dir)
    assert not [n for n in names if n.endswith(".tmp")], names
    found = ckpt.list_checkpoints(run_dir)
    assert found
    for _, path in found:
        assert ckpt.checkpoint_problem(path) is None, path


def snapshot(path):
    """{relative path: sha256} of every file under path (None if path does not exist)."""
    if not os.path.exists(path):
        return None
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            out[os.path.relpath(p, path)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(byte_data, tmp_path_factory):
    """The uninterrupted run every crashed-and-resumed run must reproduce bit for bit."""
    run_dir = str(tmp_path_factory.mktemp("reference") / "run")
    ok(run(["train.py", *args(byte_data, run_dir)]))  # cold: the warm-forked launches must reproduce it
    return run_dir


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_losses(byte_data, reference, tmp_path):
    """Two runs of the same config and seed: identical losses and weights (CPU). A different seed differs."""
    again = str(tmp_path / "again")
    ok(train(byte_data, again))
    assert_bit_identical(again, reference)
    other = str(tmp_path / "other_seed")
    ok(train(byte_data, other, "--train.seed=7", "--train.max_steps=2"))
    assert records(other)[0][0] != records(reference)[0][0]


# ----------------------------------------------------------------------------- kill anywhere

# Where a SIGKILL can land, as sitecustomize faults; n (which step / which call) is drawn from the test's seed.
# Each range is small enough that the fault fires before the run ends (asserted: the process dies of SIGKILL).
KILL_POINTS = {
    "mid-step": lambda r: dict(hook="step", action="kill", n=r.randint(1, 7)),  # after backward, before the update
    "torn checkpoint write": lambda r: dict(hook="save", action="partial_kill", n=r.randint(1, 3)),  # half on disk
    "before the marker commits": lambda r: dict(hook="replace", match=r"ckpt_\d+\.sha256$", action="kill",
                                                n=r.randint(1, 3)),
    "marker committed, .pt not renamed": lambda r: dict(hook="replace", match=r"ckpt_\d+\.sha256$",
                                                        action="kill_after", n=r.randint(1, 3)),
    "checkpoint committed, before pruning": lambda r: dict(hook="replace", match=r"ckpt_\d+\.pt$",
                                                           action="kill_after", n=r.randint(1, 3)),
    "mid-pruning": lambda r: dict(hook="remove", match=r"ckpt_\d+\.pt$", action="kill_after",
                                  n=r.randint(1, 2)),  # an old .pt deleted, its marker not yet
    "writing config.toml": lambda r: dict(hook="replace", match=r"config\.toml$", action="kill"),  # at start-up
    "cutting metrics.jsonl back": lambda r: dict(hook="replace", match=r"metrics\.jsonl$", action="kill"),  # resume
    "writing final.json": lambda r: dict(hook="replace", match=r"final\.json$", action="kill"),  # the very end
}
# The sequence of kills per seed: together they cover every kill point, each in two different histories where
# possible. "cutting metrics.jsonl back" only happens on a resume, so it follows a kill that leaves a checkpoint;
# "writing final.json" only at the end, so it comes last.
KILL_SEQUENCES = {
    0: ["mid-step", "checkpoint committed, before pruning", "cutting metrics.jsonl back", "writing final.json"],
    1: ["torn checkpoint write", "marker committed, .pt not renamed", "mid-pruning", "before the marker commits"],
    2: ["writing config.toml", "before the marker commits", "torn checkpoint write", "writing final.json"],
    3: ["mid-pruning", "cutting metrics.jsonl back", "marker committed, .pt not renamed", "mid-step"],
}


def launch_expecting_resume(data_dir, run_dir, faults=None):
    """Launch train.py; if the run dir holds a good checkpoint, assert the launch resumed from exactly that one
    (otherwise a resume that silently started over would still reproduce the reference)."""
    marked = [p for _, p in ckpt.list_checkpoints(run_dir) if ckpt.checkpoint_problem(p) is None] \
        if os.path.isdir(run_dir) else []
    good = marked[0] if marked else None
    proc = train(data_dir, run_dir, faults=faults)
    if good:
        step = int(re.search(r"ckpt_(\d+)\.pt$", good).group(1))
        assert f"resumed from step {step} " in proc.stdout, (good, proc.stdout[-1500:], proc.stderr[-1500:])
    else:
        assert "resumed from step" not in proc.stdout
    return proc


@pytest.mark.parametrize("seed", sorted(KILL_SEQUENCES))
def test_kill_anywhere_resumes_bit_exact(byte_data, reference, tmp_path, seed):
    """SIGKILL at seeded points (mid-step, a torn checkpoint write, between the commit stages, mid-pruning, at
    start-up, during the metrics rewrite, writing final.json); rerunning the same command until final.json exists
    resumes from the newest good checkpoint every time and reproduces the uninterrupted run bit for bit."""
    r = random.Random(seed)
    run_dir = str(tmp_path / "run")
    for name in KILL_SEQUENCES[seed]:
        fault = KILL_POINTS[name](r)
        proc = launch_expecting_resume(byte_data, run_dir, faults=[fault])
        assert proc.returncode == -signal.SIGKILL, (name, fault, proc.returncode, proc.stderr[-2000:])
        assert not os.path.exists(os.path.join(run_dir, "final.json")), name
    ok(launch_expecting_resume(byte_data, run_dir))
    assert_bit_identical(run_dir, reference)
    assert_clean_and_verified(run_dir)


def test_external_sigkill_at_random_steps(byte_data, reference, tmp_path):
    """The test itself SIGKILLs the process when it reports step k (whatever it is doing at that moment)."""
    run_dir = str(tmp_path / "run")
    kills = 0
    for target in sorted(random.Random(5).sample(range(3, MAX_STEPS - 2), 2)):
        proc = subprocess.Popen([sys.executable, "train.py", *args(byte_data, run_dir)], cwd=ROOT, env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in proc.stdout:
            m = re.match(r"step (\d+)/", line)
            if m and int(m.group(1)) >= target:
                proc.send_signal(signal.SIGKILL)
                break
        proc.stdout.close()
        kills += proc.wait(timeout=120) == -signal.SIGKILL
    assert kills == 2
    ok(launch_expecting_resume(byte_data, run_dir))
    assert_bit_identical(run_dir, reference)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(byte_data, reference, tmp_path):
    """A newest checkpoint whose bytes changed after writing (bit rot) fails its checksum: the run resumes from the
    previous one, keeps the bad file as *.corrupt, and still ends bit-identical."""
    run_dir = str(tmp_path / "run")
    ok(train(byte_data, run_dir, "--train.stop_after=6"))
    newest = ckpt.checkpoint_path(run_dir, 6)
    data = bytearray(open(newest, "rb").read())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the middle of a tensor
    open(newest, "wb").write(bytes(data))
    proc = ok(train(byte_data, run_dir))
    assert "resumed from step 4" in proc.stdout and "SHA-256 does not match" in proc.stdout
    assert os.path.exists(newest + ".corrupt")
    assert_bit_identical(run_dir, reference)


def test_allowed_config_change_takes_effect_on_resume(byte_data, tmp_path):
    """--checkpoint.allow_config_change=true with a new optimizer.lr: the resumed steps use the new lr (the saved
    param groups must not win over the config), and the optimizer state still carries over."""
    run_dir = str(tmp_path / "run")
    const = ["--train.max_steps=6", "--schedule.kind=constant", "--schedule.warmup_steps=0"]
    ok(train(byte_data, run_dir, *const, "--train.stop_after=3"))
    proc = ok(train(byte_data, run_dir, *const, "--optimizer.lr=2e-2", "--checkpoint.allow_config_change=true"))
    assert "resumed from step 3 " in proc.stdout and "optimizer.lr: 0.01 -> 0.02" in proc.stdout
    lrs = {json.loads(x)["step"]: json.loads(x)["lr"] for x in open(os.path.join(run_dir, "metrics.jsonl"))
           if json.loads(x).get("kind") == "train"}
    assert lrs == {0: 1e-2, 1: 1e-2, 2: 1e-2, 3: 2e-2, 4: 2e-2, 5: 2e-2}
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir, 6))
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {6.0}  # AdamW moments carried over


def test_checkpoints_from_before_the_markers_still_resume(byte_data, reference, tmp_path):
    """A run dir written by a nanoptim without .sha256 markers (simulated by deleting them) resumes with a warning
    and ends bit-identical; the checkpoints written after the resume have markers."""
    run_dir = str(tmp_path / "run")
    ok(train(byte_data, run_dir, "--train.stop_after=6"))
    for marker in [ckpt.marker_path(p) for _, p in ckpt.list_checkpoints(run_dir)]:
        os.remove(marker)
    proc = ok(train(byte_data, run_dir))
    assert "resumed from step 6 " in proc.stdout and "has no .sha256 completion marker" in proc.stdout
    assert_bit_identical(run_dir, reference)
    assert_clean_and_verified(run_dir)


def test_a_damaged_checkpoint_without_marker_is_not_trusted(byte_data, reference, tmp_path):
    """An unmarked checkpoint with 16 flipped bytes fails its zip CRC32s: it is set aside with a one-line warning and
    the run resumes from the good older one, ending bit-identical (before, it was loaded and training went NaN)."""
    run_dir = str(tmp_path / "run")
    ok(train(byte_data, run_dir, "--train.stop_after=6"))
    for marker in [ckpt.marker_path(p) for _, p in ckpt.list_checkpoints(run_dir)]:
        os.remove(marker)
    newest = ckpt.checkpoint_path(run_dir, 6)
    data = bytearray(open(newest, "rb").read())
    for i in range(16):
        data[len(data) // 2 + 97 * i] ^= 0xFF
    open(newest, "wb").write(bytes(data))
    proc = ok(train(byte_data, run_dir))
    assert "resumed from step 4 " in proc.stdout and "fails its CRC32 check" in proc.stdout, proc.stdout[-2000:]
    assert os.path.exists(newest + ".corrupt")
    assert_bit_identical(run_dir, reference)


def test_a_checkpoint_with_non_finite_weights_is_set_aside(byte_data, reference, tmp_path):
    """A checkpoint whose weights hold a NaN (with a matching marker, so only the content is wrong) is never resumed
    from: the run falls back to the previous one and ends bit-identical."""
    run_dir = str(tmp_path / "run")
    ok(train(byte_data, run_dir, "--train.stop_after=6"))
    newest = ckpt.checkpoint_path(run_dir, 6)
    state = torch.load(newest, weights_only=True)
    next(iter(state["model"].values())).view(-1)[0] = float("nan")
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    _write_with_marker(newest, buf.getvalue())
    proc = ok(train(byte_data, run_dir))
    assert "resumed from step 4 " in proc.stdout and "non-finite values" in proc.stdout, proc.stdout[-2000:]
    assert_bit_identical(run_dir, reference)


# ----------------------------------------------------------------------------- restarts (run.sh, torchrun)


def test_run_sh_restarts_a_crashed_single_process(byte_data, reference, tmp_path):
    """NPROC=1: run.sh's loop restarts train.py after a SIGKILL; the restart resumes and matches bit for bit."""
    run_dir = str(tmp_path / "run")
    once = str(tmp_path / "fired")
    proc = run(["bash", "run.sh", *args(byte_data, run_dir)], NPROC="1",
               faults=[dict(hook="step", action="kill", n=9, once=once)])
    ok(proc)
    assert "restart 1 of 3" in proc.stdout and "resumed from step 8" in proc.stdout, proc.stdout[-3000:]
    assert_bit_identical(run_dir, reference)


def test_elastic_restart_after_a_worker_is_killed(byte_data, tmp_path):
    """NPROC=2 (gloo): rank 1 is SIGKILLed at step 6; torchrun (run.sh --max-restarts) restarts the group, which
    resumes from the last good checkpoint and finishes bit-identical to an uninterrupted 2-process run."""
    extra = ["--train.max_steps=12"]
    ref_dir, run_dir = str(tmp_path / "reference"), str(tmp_path / "run")
    ok(run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
            *args(byte_data, ref_dir, *extra)]))
    once = str(tmp_path / "fired")
    proc = ok(run(["bash", "run.sh", *args(byte_data, run_dir, *extra)], NPROC="2",
                  faults=[dict(hook="step", action="kill", n=7, rank=1, once=once)]))
    assert os.path.exists(once)  # the worker really was killed
    assert "resumed from step 6" in proc.stdout, proc.stdout[-3000:]
    train_l, eval_l = records(run_dir)
    assert sorted(train_l) == list(range(12)) and (train_l, eval_l) == records(ref_dir)
    a, b = (ckpt.load_checkpoint(ckpt.checkpoint_path(d, 12)) for d in (run_dir, ref_dir))
    assert_same_tensors(a["model"], b["model"], "model")
    assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer")
    assert_clean_and_verified(run_dir)


def test_ddp_workers_end_after_an_error_when_gloo_frees_its_last_work_late(byte_data, tmp_path):
    """gloo's run-loop thread frees a finished collective's tensors after the caller's wait() returned. Without
    launch.run_process a worker that stops on an error then hangs (the traceback's frames free the DDP model, whose
    Reducer frees the process group and joins that thread with the GIL held) or, if the free comes during the
    interpreter's finalization, dies of SIGABRT ("terminate called without an active exception"). The
    starve_threads fault makes the late free certain (gloo's threads run only while the main thread waits); both
    workers must still end at once with the error's exit code 2. (A run that finishes cleanly never met this
    schedule: its last frees happen after the main thread stopped waiting for anything.)"""
    run_dir = str(tmp_path / "run")
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                *args(byte_data, run_dir, "--train.max_steps=6")], timeout=120,
               faults=[dict(hook="init", action="starve_threads"), dict(hook="step", action="inf_grad", n=4)])
    assert "terminate called" not in proc.stderr and "exitcode  : -6" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode != 0 and "non-finite gradient" in proc.stderr, (proc.returncode, proc.stderr[-3000:])
    assert "exitcode  : 2" in proc.stderr, proc.stderr[-3000:]


def test_user_error_under_torchrun_is_not_retried(byte_data, tmp_path):
    """A deterministic failure (here a non-finite gradient with nonfinite=stop) is not re-run by torchrun's
    restarts: the worker stops the agent at once, and run.sh prints the error once (not once per rank or attempt),
    with no torchrun log lines or ChildFailedError traceback, exit code 2."""
    run_dir = str(tmp_path / "run")
    proc = run(["bash", "run.sh", *args(byte_data, run_dir)], NPROC="2", MAX_RESTARTS="3",
               faults=[dict(hook="step", action="inf_grad", n=4)])
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: non-finite gradient at step 3"), proc.stderr[-3000:]
    assert proc.stdout.count("resumed from step") == 0  # no restarted attempt re-ran any training


# ----------------------------------------------------------------------------- different world size on resume


def _launch_ddp(data_dir, run_dir, *extra):
    return ok(run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                   *args(data_dir, run_dir, *extra)]))


@pytest.mark.parametrize("optimizer", ["adamw", "lionmuon"])
def test_resume_with_another_world_size(byte_data, tmp_path, optimizer):
    """Checkpoint at step 4 with 2 ranks, resume with 1 (and 1 → 2): the next steps' losses equal those of the run
    that kept its world size, within fp tolerance (gradient accumulation splits differ). lionmuon shards its
    Newton–Schulz across ranks, so this also checks its state is complete on rank 0."""
    extra = ["--train.max_steps=8", "--train.stop_after=4", f"--optimizer.name={optimizer}", "--model.dropout=0.0"]
    if optimizer == "lionmuon":
        extra += ["--optimizer.betas=[0.9, 0.99]", "--optimizer.weight_decay=0.1", "--optimizer.lion_lr=1e-3"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    ok(train(byte_data, one, *extra))  # 1 process, steps 0-3
    _launch_ddp(byte_data, two, *extra)  # 2 processes, steps 0-3
    one_to_two = str(tmp_path / "one_to_two")
    shutil.copytree(one, one_to_two)
    resumed = [ok(train(byte_data, one, *extra)),  # 1 → 1: the reference continuation (bit-exact, see above)
               ok(train(byte_data, two, *extra)),  # 2 → 1
               _launch_ddp(byte_data, one_to_two, *extra)]  # 1 → 2
    for proc in resumed:  # each continued from the step-4 checkpoint rather than starting over
        assert "resumed from step 4 " in proc.stdout and "step 0/8" not in proc.stdout
    ref, _ = records(one)
    assert sorted(ref) == list(range(8))
    for name in ("two", "one_to_two"):
        got, _ = records(str(tmp_path / name))
        assert sorted(got) == list(range(8)), name
        for step in range(8):
            assert got[step] == pytest.approx(ref[step], rel=2e-5, abs=1e-6), (name, step, got[step], ref[step])
        worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in range(4, 8))
        print(f"{optimizer} {name}: max relative loss difference after the resume {worst:.2e}")


# ----------------------------------------------------------------------------- non-finite loss / gradients


# ----------------------------------------------------------------------------- signals


def _wait_for_step(proc, k):
    for line in proc.stdout:
        if line.startswith(f"step {k}/"):
            return
    raise AssertionError("the run ended before step %d" % k)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR1, 138)])
def test_a_signal_stops_at_a_step_with_a_checkpoint(byte_data, reference, tmp_path, sig, code):
    """Ctrl-C (SIGINT), a scheduler's SIGTERM or SLURM's SIGUSR1 warning: the current step finishes, a checkpoint
    of it is written, one line is printed, exit 130 / 143 / 138; rerunning the same command resumes from it and
    ends bit-identical."""
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "train.py", *args(byte_data, run_dir)], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_step(proc, 5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (proc.returncode, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stopped: {signal.Signals(sig).name} after step "), err
    step = int(re.search(r"after step (\d+)", lines[0]).group(1))
    assert os.path.exists(ckpt.checkpoint_path(run_dir, step)) and "Traceback" not in err
    again = ok(train(byte_data, run_dir))
    assert f"resumed from step {step} " in again.stdout
    assert_bit_identical(run_dir, reference)


def test_killing_run_sh_stops_its_worker_and_is_not_restarted(byte_data, tmp_path):
    """SIGTERM to run.sh alone (what `kill` or Kubernetes does): it reaches train.py, which checkpoints and exits
    143; run.sh does not restart it and leaves no worker training in the background."""
    run_dir = str(tmp_path / "run")
    proc = subprocess.Popen(["bash", "run.sh", *args(byte_data, run_dir, "--train.max_steps=400")], cwd=ROOT,
                            env=env(NPROC="1", PYTHON=sys.executable), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_step(proc, 3)
        os.kill(proc.pid, signal.SIGTERM)  # run.sh only, not its process group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, (proc.returncode, out[-1500:], err[-1500:])
    assert "restart" not in out and "stopped: SIGTERM after step" in err, (out[-1500:], err[-1500:])
    left = subprocess.run(["pgrep", "-f", run_dir], capture_output=True, text=True).stdout.split()
    assert not left, f"processes still running for {run_dir}: {left}"


@pytest.mark.slow
def test_sigkill_of_the_torchrun_agent_stops_its_workers_at_a_checkpoint(byte_data, tmp_path):
    """The agent (run.sh's `python launch.py`, i.e. torchrun) SIGKILLed, so it cannot stop its workers: each worker
    gets SIGTERM from the kernel (PR_SET_PDEATHSIG), checkpoints and exits; none trains on in the background."""
    run_dir = str(tmp_path / "run")
    agent = subprocess.Popen([sys.executable, "launch.py", "--standalone", "--nproc_per_node=2", "train.py",
                              *args(byte_data, run_dir, "--train.max_steps=400")], cwd=ROOT, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    rest = {"stdout": [], "stderr": []}
    drain = ThreadPoolExecutor(2)
    try:
        _wait_for_step(agent, 3)
        # keep reading what the workers print (they share the agent's pipes): a worker must never block on a full
        # pipe that nobody reads, which is this test's doing, not a terminal's or a log file's
        drained = [drain.submit(lambda f, out: out.extend(f), getattr(agent, name), rest[name]) for name in rest]
        agent.kill()
        agent.wait(timeout=30)
        deadline = time.time() + 120
        while time.time() < deadline and subprocess.run(["pgrep", "-f", run_dir], capture_output=True).stdout:
            time.sleep(0.5)
        left = subprocess.run(["pgrep", "-f", run_dir], capture_output=True, text=True).stdout.split()
        where = {pid: _process_state(pid) for pid in left}
        with contextlib.suppress(TimeoutError):  # the pipes end when the last worker does (a hung one keeps them)
            for f in drained:
                f.result(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGKILL)
        drain.shutdown(wait=False)
    # (a worker that hung at its exit, asleep on a futex after its stop line, was launch.run_process's bug: see
    # test_ddp_workers_end_after_an_error_when_gloo_frees_its_last_work_late)
    assert not where, (
        f"workers still running after their agent died: {where}\nstdout: {''.join(rest['stdout'])[-1500:]}\n"
        f"stderr: {''.join(rest['stderr'])[-3000:]}")
    assert ckpt.list_checkpoints(run_dir), "the workers stopped without a checkpoint"


def _process_state(pid: str) -> str:
    """A process's state and kernel wait channel, for the message of a test that finds it still running."""
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("State:")), "?")
        with open(f"/proc/{pid}/wchan") as f:
            return f"{state}, waiting in {f.read().strip() or '-'}"
    except OSError as e:
        return f"gone ({e.strerror})"


# ----------------------------------------------------------------------------- one writer per run dir


def test_a_second_run_into_a_used_run_dir_is_refused(byte_data, tmp_path):
    """Two runs into one run dir: the one that comes second refuses at once, in one line naming the holder, and the
    first finishes with its whole history; the lock goes with its process even when that process is SIGKILLed."""
    run_dir = str(tmp_path / "run")
    first = subprocess.Popen([sys.executable, "train.py", *args(byte_data, run_dir, "--train.max_steps=400")],
                             cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        for line in first.stdout:  # the lock is taken before config.toml is written, long before step 2
            if line.startswith("step 2/"):
                break
        second = train(byte_data, run_dir, "--train.max_steps=400")
        one_error_line(second)
        assert "is in use by another run" in second.stderr and f"pid={first.pid}" in second.stderr, second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # SIGKILL: no cleanup runs, only the kernel can drop the lock
        first.communicate()
    before = records(run_dir)[0]
    assert sorted(before) == list(range(len(before))) and len(before) >= 3  # the first run's history is whole
    again = ok(train(byte_data, run_dir, "--train.max_steps=400", "--train.stop_after=2"))
    assert "resumed from step" in again.stdout  # the killed run left no stale lock: the same command resumes


def test_a_live_lock_holder_is_named(byte_data, tmp_path):
    """The refusal names host and pid of a process that holds the lock without training (another tool)."""
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    holder = subprocess.Popen([sys.executable, "-c", "import resume, sys, time\nresume.lock_run_dir(sys.argv[1])\n"
                               "print('locked', flush=True)\ntime.sleep(600)", run_dir],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_dir)
        proc = train(byte_data, run_dir)
        one_error_line(proc)
        assert f"pid={holder.pid}" in proc.stderr and "host=" in proc.stderr
        assert snapshot(run_dir) == before  # nothing written
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_nonfinite_stop_names_the_step_and_keeps_the_checkpoint(byte_data, tmp_path):
    run_dir = str(tmp_path / "run")
    proc = train(byte_data, run_dir, "--train.nonfinite=stop", faults=[dict(hook="step", action="inf_grad", n=6)])
    line = one_error_line(proc)
    assert "non-finite gradient at step 5" in line and "ckpt_00000004.pt is intact" in line, line
    assert "--train.nonfinite=skip" in line
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)] == [4, 2]
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir, 4))["step"] == 4  # checksum verified
    assert max(records(run_dir)[0]) == 4  # step 5 was never logged as a normal step


def test_nonfinite_skip_counts_logs_and_skips_the_update(byte_data, tmp_path):
    run_dir = str(tmp_path / "run")
    proc = ok(train(byte_data, run_dir, "--train.nonfinite=skip", "--train.max_steps=8",
                    faults=[dict(hook="step", action="inf_grad", n=6)]))
    assert "step 5: non-finite gradient, update skipped" in proc.stdout
    recs = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    by_step = {r["step"]: r for r in recs if r.get("kind") == "train"}
    assert by_step[5]["grad_norm"] is None and by_step[5]["skipped"] == 1 and by_step[4]["skipped"] == 0
    assert by_step[7]["skipped"] == 1
    final = json.load(open(os.path.join(run_dir, "final.json")))
    assert final["skipped_steps"] == 1 and final["tokens"] == 7 * 512  # 8 steps, 7 updates
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir, 8))
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {7.0}  # AdamW took 7 updates, not 8


def test_skip_mode_never_prunes_or_names_a_wrecked_checkpoint(byte_data, tmp_path):
    """train.nonfinite = skip with weights wrecked (finite, ×1e10, so every later loss is non-finite): the skipped
    steps' checkpoints are written but not good, keep_last never prunes the last good one, the stop names it, and
    resuming from it with a lower lr (the command the message gives) trains on with finite losses."""
    run_dir = str(tmp_path / "run")
    proc = train(byte_data, run_dir, "--train.nonfinite=skip", "--train.max_steps=40",
                 faults=[dict(hook="step", action="wreck_weights", n=9)])  # step 8, after the checkpoint at 8
    line = one_error_line(proc)
    assert "steps in a row" in line and "ckpt_00000008.pt is intact" in line, line
    assert "--checkpoint.resume_from=" in line and "not a good checkpoint" in proc.stdout
    kept = [os.path.basename(p) for _, p in ckpt.list_checkpoints(run_dir)]
    assert "ckpt_00000008.pt" in kept and len(kept) == 3, kept  # keep_last 2 newest + the protected good one
    hint = re.search(r"--checkpoint\.resume_from=(\S+)", line).group(1)
    command = ["--train.nonfinite=skip", "--train.max_steps=40", f"--checkpoint.resume_from={hint}",
               "--checkpoint.allow_config_change=true", "--optimizer.lr=5e-3"]
    again = ok(train(byte_data, run_dir, *command, "--train.stop_after=10"))
    assert "resumed from step 8 " in again.stdout and "abandoned" in again.stdout
    # the same command again (run.sh restarting it after a crash) goes on from the newest, not back to step 8
    again = ok(train(byte_data, run_dir, *command))
    assert "applied by an earlier launch" in again.stdout and "resumed from step 18 " in again.stdout
    losses = records(run_dir)[0]
    assert sorted(losses) == list(range(40)) and all(math.isfinite(losses[s]) for s in range(8, 40))
    abandoned = sorted(f for f in os.listdir(run_dir) if f.endswith(".pt.abandoned"))
    assert abandoned == ["ckpt_00000016.pt.abandoned", "ckpt_00000018.pt.abandoned"], abandoned  # the wrecked ones
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir, 40))["good"]


def test_nonfinite_weights_are_never_checkpointed(byte_data, tmp_path):
    """Even with nonfinite=skip: weights that became inf are not written as a checkpoint and the run stops at the
    last good one (skipping cannot repair them)."""
    run_dir = str(tmp_path / "run")
    proc = train(byte_data, run_dir, "--train.nonfinite=skip", faults=[dict(hook="step", action="inf_weight", n=4)])
    line = one_error_line(proc)
    assert "weights became non-finite by step 4" in line and "ckpt_00000002.pt is intact" in line, line
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)] == [2]


# ----------------------------------------------------------------------------- disk full / unwritable run dir

DISK_FAULTS = {
    "disk full mid checkpoint write": (dict(hook="save", action="partial_enospc", n=2),
                                       ["could not write checkpoint", "ckpt_00000004.pt", "No space left on device",
                                        "previous checkpoint is intact"]),
    "disk full committing the marker": (dict(hook="replace", match=r"\.sha256$", action="enospc", n=2),
                                        ["could not write checkpoint", "No space left on device"]),
    "run dir unwritable at the checkpoint": (dict(hook="open", match=r"ckpt_00000004\.pt\.tmp$", action="eacces"),
                                             ["could not write checkpoint", "Permission denied", "fix permissions"]),
    "disk full writing final.json": (dict(hook="open", match=r"final\.json\.tmp$", action="enospc"),
                                     ["could not write", "final.json", "No space left on device", "rerun the same"]),
}


@pytest.mark.parametrize("name", sorted(DISK_FAULTS))
def test_disk_full_or_unwritable_keeps_the_previous_checkpoint(byte_data, reference, tmp_path, name):
    """A failing write: one clear line, exit 2, no torn file, the previous checkpoint loads, and rerunning the same
    command once the disk has room finishes the run exactly as if nothing happened."""
    fault, words = DISK_FAULTS[name]
    run_dir = str(tmp_path / "run")
    line = one_error_line(train(byte_data, run_dir, faults=[fault]))
    for w in words:
        assert w in line, (w, line)
    assert_clean_and_verified(run_dir)
    good = ckpt.list_checkpoints(run_dir)[0]
    assert ckpt.load_checkpoint(good[1])["step"] == good[0]
    ok(train(byte_data, run_dir))
    assert_bit_identical(run_dir, reference)


# ----------------------------------------------------------------------------- bad input table


@pytest.fixture(scope="module")
def good_run(byte_data, tmp_path_factory):
    """A finished 4-step run to point bad inputs at (copied per row, so rows cannot affect each other)."""
    run_dir = str(tmp_path_factory.mktemp("good") / "run")
    ok(train(byte_data, run_dir, "--train.max_steps=4"))
    return run_dir


def _bad_data_dirs(byte_data, base):
    """Data directories with one defect each."""
    from data.shards import write_shard

    dirs = {}
    for name in ("bad_magic", "truncated", "big_ids"):
        d = os.path.join(base, name)
        os.makedirs(d)
        shutil.copy(os.path.join(byte_data, "bytes_val_000000.bin"), d)
        dirs[name] = d
    tokens = np.frombuffer(corpus_text().encode("ascii", "replace")[:200_000], dtype=np.uint8).astype(np.uint16)
    write_shard(os.path.join(dirs["bad_magic"], "x_train_000000.bin"), tokens)
    with open(os.path.join(dirs["bad_magic"], "x_train_000000.bin"), "r+b") as f:
        f.write(np.int32(12345).tobytes())  # the header's magic number
    write_shard(os.path.join(dirs["truncated"], "x_train_000000.bin"), tokens)
    p = os.path.join(dirs["truncated"], "x_train_000000.bin")
    os.truncate(p, os.path.getsize(p) - 1000)
    big = tokens.copy()
    big[1234] = 500  # >= vocab_size 128
    write_shard(os.path.join(dirs["big_ids"], "x_train_000000.bin"), big)
    return dirs


class Evil:
    """Unpickling this runs a shell command: what a malicious checkpoint would do without weights_only."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def _write_with_marker(path, data: bytes):
    open(path, "wb").write(data)
    open(ckpt.marker_path(path), "w").write(f"{hashlib.sha256(data).hexdigest()}  {os.path.basename(path)}\n")


def bad_input_rows(byte_data, good_run, base):
    """[(name, command, expected words in the error, path that must not change)] — every row one bad input."""
    d = _bad_data_dirs(byte_data, base)
    sentinel = os.path.join(base, "PWNED")

    def copy_run(name, mutate=None):
        dst = os.path.join(base, "runs", name)
        shutil.copytree(good_run, dst)
        if mutate:
            mutate(dst)
        return dst

    def tml(name, text):
        p = os.path.join(base, name)
        open(p, "w").write(text)
        return p

    def evil_ckpt(run_dir):
        for _, p in ckpt.list_checkpoints(run_dir):
            os.remove(p)
            os.remove(ckpt.marker_path(p))
        buf = __import__("io").BytesIO()
        torch.save({"model": {}, "step": 4, "payload": Evil(sentinel)}, buf)
        _write_with_marker(ckpt.checkpoint_path(run_dir, 4), buf.getvalue())

    def garbage_ckpt(run_dir, marker):
        for _, p in ckpt.list_checkpoints(run_dir):
            os.remove(p)
            os.remove(ckpt.marker_path(p))
        p = ckpt.checkpoint_path(run_dir, 4)
        if marker:
            _write_with_marker(p, b"this is not a checkpoint\n" * 100)
        else:
            open(p, "wb").write(b"this is not a checkpoint\n" * 100)

    def flip_bit(run_dir):
        for _, p in ckpt.list_checkpoints(run_dir):  # every checkpoint damaged: nothing to fall back to
            data = bytearray(open(p, "rb").read())
            data[-5000] ^= 0x10
            open(p, "wb").write(bytes(data))

    def train_row(name, run_dir, *extra, config="configs/tiny_cpu.toml", data=byte_data):
        a = args(data, run_dir, "--train.max_steps=4", *extra)
        a[0] = config
        return [name, ["train.py", *a], run_dir]

    fresh = lambda name: os.path.join(base, "fresh", name)
    evil_file = os.path.join(base, "evil.pt")
    buf = __import__("io").BytesIO()
    torch.save({"model": {}, "step": 4, "payload": Evil(sentinel)}, buf)
    open(evil_file, "wb").write(buf.getvalue())
    not_ckpt = tml("notes.pt", "just some text\n")
    sample_run = copy_run("sample")

    rows = [
        # --- config
        (*train_row("malformed TOML", copy_run("toml"), config=tml("bad.toml", "[train]\nmax_steps = = 3\n")),
         ["not valid TOML"]),
        (*train_row("unknown key in the file", copy_run("key_file"),
                    config=tml("key.toml", "[train]\nmax_stepz = 3\n")), ["unknown key", "max_stepz", "max_steps"]),
        (*train_row("unknown key on the command line", copy_run("key_cli"), "--optimizer.lrr=1e-3"),
         ["unknown key", "did you mean 'lr'"]),
        (*train_row("wrong type in the file", copy_run("type_file"),
                    config=tml("type.toml", "[train]\nmax_steps = \"ten\"\n")), ["train.max_steps", "wrong type"]),
        (*train_row("wrong type on the command line", copy_run("type_cli"), "--train.compile=3"),
         ["train.compile", "bool"]),
        (*train_row("negative learning rate", copy_run("neg_lr"), "--optimizer.lr=-1e-3"), ["optimizer.lr", "> 0"]),
        (*train_row("LionMuon period P < 1", copy_run("period"), "--optimizer.name=lionmuon",
                    "--optimizer.period=0.5"), ["optimizer.period", ">= 1"]),
        (*train_row("beta outside [0, 1)", copy_run("betas"), "--optimizer.betas=[0.9, 1.0]"),
         ["optimizer.betas", "[0, 1)"]),
        (*train_row("negative weight decay", copy_run("wd"), "--optimizer.weight_decay=-0.1"),
         ["optimizer.weight_decay"]),
        (*train_row("batch not a multiple of the context", copy_run("multiple"), "--train.batch_tokens=500"),
         ["not a multiple of the sequence length 32"]),
        (*train_row("validation set smaller than one sequence", copy_run("val"), "--data.val_tokens=8"),
         ["data.val_tokens", "at least 32"]),
        (*train_row("CUDA asked for on a CPU machine", copy_run("cuda"), "--train.device=cuda"),
         ["train.device", "cpu"]),
        (*train_row("config file does not exist", copy_run("nofile"), config=os.path.join(base, "nope.toml")),
         ["does not exist"]),
        (*train_row("code in a config value is data, not run", copy_run("code"),
                    config=tml("code.toml", f"[optimizer]\nname = \"__import__('os').system('touch {sentinel}')\"\n")),
         ["optimizer.name", "unknown"]),
        # --- data
        (*train_row("missing data dir", fresh("nodata"), data=os.path.join(base, "no_such_dir")),
         ["data directory", "does not exist", "data.prepare"]),
        (*train_row("shard with a bad magic number", fresh("magic"), data=d["bad_magic"]), ["magic"]),
        (*train_row("truncated shard", fresh("truncated"), data=d["truncated"]), ["header promises"]),
        (*train_row("token id >= vocab_size", fresh("big_ids"), data=d["big_ids"]),
         ["token id 500", "vocab_size is 128"]),
        # --- run dir and checkpoints
        (*train_row("run dir holds another config", copy_run("other_config"), "--optimizer.lr=2e-2"),
         ["holds a different run", "optimizer.lr", "allow_config_change"]),
        (*train_row("checkpoint from a different model shape", copy_run("shape"), "--model.n_embd=64",
                    "--checkpoint.allow_config_change=true"), ["different model", "n_embd 32 -> 64"]),
        (*train_row("checkpoint from a different optimizer", copy_run("optim"), "--optimizer.name=lion",
                    "--optimizer.lr=1e-4", "--checkpoint.allow_config_change=true"),
         ["'adamw' optimizer state", "--optimizer.name=adamw"]),
        (*train_row("checkpoint file that is not a checkpoint (no marker)",
                    copy_run("garbage", lambda r: garbage_ckpt(r, marker=False))),
         ["none is usable", "no completion marker"]),
        (*train_row("checkpoint file that is not a checkpoint (valid marker)",
                    copy_run("garbage_marker", lambda r: garbage_ckpt(r, marker=True))),
         ["none is usable", "not a torch.save archive"]),
        (*train_row("every checkpoint damaged (checksum mismatch)", copy_run("flipped", flip_bit)),
         ["none is usable", "SHA-256 does not match"]),
        (*train_row("malicious pickle in the run dir", copy_run("evil", evil_ckpt)),
         ["safe loading refuses", "posix.system"]),
        (*train_row("resume = never on a used run dir", copy_run("never"), "--checkpoint.resume=never"),
         ["resume = 'never'"]),
        # --- sample.py
        ("sample: empty prompt", ["sample.py", "--ckpt", sample_run, "--prompt", "   "], sample_run,
         ["prompt is empty"]),
        ("sample: prompt longer than the context", ["sample.py", "--ckpt", sample_run, "--prompt", "word " * 40],
         sample_run, ["41 tokens", "context is 32"]),
        ("sample: prompt outside the model's vocabulary", ["sample.py", "--ckpt", sample_run, "--prompt", "ROMEO:"],
         sample_run, ["vocab_size 128"]),
        ("sample: checkpoint does not exist", ["sample.py", "--ckpt", os.path.join(base, "nope.pt")], sample_run,
         ["does not exist"]),
        ("sample: file that is not a checkpoint", ["sample.py", "--ckpt", not_ckpt], sample_run,
         ["not a usable checkpoint", "not a torch.save archive"]),
        ("sample: malicious pickle", ["sample.py", "--ckpt", evil_file], sample_run,
         ["safe loading refuses", "posix.system"]),
        ("sample: run dir without a checkpoint", ["sample.py", "--ckpt", base], sample_run, ["holds no checkpoint"]),
        ("sample: --temperature 0", ["sample.py", "--ckpt", sample_run, "--temperature", "0"], sample_run,
         ["--temperature"]),
        ("sample: --temperature nan", ["sample.py", "--ckpt", sample_run, "--temperature", "nan"], sample_run,
         ["--temperature nan", "finite"]),
        ("sample: --temperature inf", ["sample.py", "--ckpt", sample_run, "--temperature", "inf"], sample_run,
         ["--temperature inf", "finite"]),
        ("sample: --seed -1", ["sample.py", "--ckpt", sample_run, "--seed", "-1"], sample_run, ["--seed -1"]),
        *([] if torch.cuda.is_available() else [
            ("sample: --device cuda without a GPU", ["sample.py", "--ckpt", sample_run, "--device", "cuda"],
             sample_run, ["no CUDA GPU", "--device cpu"])]),
        # --- values that used to pass silently, and run-dir paths that are not directories
        (*train_row("grad_clip = nan", fresh("nan_clip"), "--train.grad_clip=nan"),
         ["train.grad_clip", "not a number"]),
        (*train_row("lr = inf", fresh("inf_lr"), "--optimizer.lr=inf"), ["optimizer.lr", "not finite"]),
        (*train_row("seed beyond 32 bits", fresh("big_seed"), "--train.seed=4294967296"), ["train.seed", "2**32"]),
        (*train_row("empty config file", fresh("empty_cfg"), config=tml("empty.toml", "")), ["is empty"]),
        (*train_row("run_dir is empty", fresh("empty_dir"), "--logging.run_dir="), ["logging.run_dir is empty"]),
        (*train_row("run_dir is a file", not_ckpt), ["is a file, not a directory"]),
        (*train_row("run_dir under a file", os.path.join(not_ckpt, "run")), ["lies under the file"]),
        # --- data.prepare
        ("prepare: --workers 0", [sys.executable, "-m", "data.prepare", "shakespeare", "--out", fresh("prep0"),
                                  "--workers", "0"], fresh("prep0"), ["--workers 0", ">= 1"]),
        ("prepare: unwritable --out", [sys.executable, "-m", "data.prepare", "shakespeare", "--out",
                                       "/proc/nanoptim_test/out"], fresh("prep_ro"), ["cannot write into"]),
        # --- run.sh (NPROC=1)
        ("run.sh: NPROC=0", ["env", "NPROC=0", "bash", "run.sh", *args(byte_data, fresh("sh_np0"))],
         fresh("sh_np0"), ["NPROC=0", "integer >= 1"]),
        ("run.sh: NPROC=abc", ["env", "NPROC=abc", "bash", "run.sh", *args(byte_data, fresh("sh_npa"))],
         fresh("sh_npa"), ["NPROC=abc", "integer >= 1"]),
        ("run.sh: unknown key", ["bash", "run.sh", *args(byte_data, copy_run("sh_key"), "--train.max_stepz=3")],
         os.path.join(base, "runs", "sh_key"), ["unknown key", "max_stepz"]),
        ("run.sh: missing data dir", ["bash", "run.sh", *args(os.path.join(base, "nodata2"), fresh("sh_data"))],
         fresh("sh_data"), ["data directory", "does not exist"]),
    ]
    return rows, sentinel


# Rows that also run cold (`python train.py ...` in a fresh interpreter), as a control on the warm-forked rows.
COLD_ROWS = ("malformed TOML", "missing data dir", "malicious pickle in the run dir", "sample: malicious pickle")


def test_bad_inputs_give_one_line_and_change_nothing(byte_data, good_run, tmp_path):
    """Every row: exit code 2, exactly one stderr line `error: ...` naming the problem (and no traceback), and the
    run dir byte-for-byte unchanged (or still absent). Python rows run warm-forked; run.sh rows and COLD_ROWS run
    as cold subprocesses at the same time (COLD_ROWS both ways, which must print the same line)."""
    rows, sentinel = bad_input_rows(byte_data, good_run, str(tmp_path))
    names = [r[0] for r in rows]
    assert len(set(names)) == len(names) and set(COLD_ROWS) <= set(names)
    before = {name: snapshot(watched) for name, _, watched, _ in rows}
    cold = [(name, cmd) for name, cmd, _, _ in rows if not cmd[0].endswith(".py") or name in COLD_ROWS]

    results, control = {}, {}
    with ThreadPoolExecutor(max_workers=1) as pool:
        cold_future = pool.submit(lambda: [(name, run(cmd, timeout=120, NPROC="1")) for name, cmd in cold])
        for name, cmd, _, _ in rows:
            if cmd[0].endswith(".py"):
                results[name] = WARM.run(cmd, timeout=120)
        for name, proc in cold_future.result():
            (control if name in results else results)[name] = proc

    failures = []
    for name, _, watched, words in rows:
        try:
            line = one_error_line(results[name])
            print(f"{name} | {line}")
            for w in words:
                assert w in line, f"{w!r} not in {line!r}"
            if name in control:
                assert one_error_line(control[name]) == line, "the cold run says something else"
            assert snapshot(watched) == before[name], "the run dir changed"
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not os.path.exists(sentinel), "a config value or a checkpoint executed code"
    assert not failures, "\n".join(failures)
    assert len(rows) >= 50
    print(f"{len(rows)} bad inputs tried ({len(cold)} of them also or only cold), all refused with one line, "
          f"nothing changed")


# ----------------------------------------------------------------------------- security


def test_a_symlink_in_the_run_dir_is_never_written_through(byte_data, good_run, tmp_path):
    """metrics.jsonl (or .lock, config.toml, final.json) as a symlink to another file: the run refuses in one line
    and the target is untouched (appending to metrics.jsonl would have written into it)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for name in ("metrics.jsonl", ".lock"):
        run_dir = str(tmp_path / f"run_{name}")
        shutil.copytree(good_run, run_dir)
        if os.path.exists(os.path.join(run_dir, name)):
            os.remove(os.path.join(run_dir, name))
        os.symlink(victim, os.path.join(run_dir, name))
        line = one_error_line(train(byte_data, run_dir, "--train.max_steps=4"))
        assert "is a symlink" in line and name in line, line
        assert victim.read_text() == "precious\n"


def test_a_damaged_config_toml_names_the_command_that_works(byte_data, good_run, tmp_path):
    """A damaged config.toml beside good checkpoints: one line giving the command; after it, the run resumes, and
    its config is checked against the checkpoint's own (a changed lr is still refused)."""
    run_dir = str(tmp_path / "run")
    shutil.copytree(good_run, run_dir)
    saved = os.path.join(run_dir, "config.toml")
    open(saved, "w").write("[train\nmax_steps = ")
    line = one_error_line(train(byte_data, run_dir, "--train.max_steps=6"))
    assert f"mv {saved} {saved}.damaged" in line, line
    os.replace(saved, saved + ".damaged")
    refused = one_error_line(train(byte_data, run_dir, "--train.max_steps=6", "--optimizer.lr=0.5"))
    assert "written by a different run" in refused and "optimizer.lr" in refused, refused
    proc = ok(train(byte_data, run_dir, "--train.max_steps=4"))  # the run's own config: a finished run, resumed
    assert "holds a finished run" in proc.stdout or "resumed from step 4" in proc.stdout


@pytest.mark.parametrize("nested", [False, True])
def test_malicious_pickle_is_refused_even_with_a_valid_checksum(tmp_path, nested):
    """Also when the payload hides in a nested container next to real tensors (model -> list -> dict)."""
    sentinel = str(tmp_path / "PWNED")
    path = ckpt.checkpoint_path(str(tmp_path), 3)
    buf = __import__("io").BytesIO()
    payload = {"model": {"w": [torch.zeros(2), {"x": Evil(sentinel)}]}, "step": 3} if nested else \
        {"model": {"w": torch.zeros(2)}, "step": 3, "payload": Evil(sentinel)}
    torch.save(payload, buf)
    _write_with_marker(path, buf.getvalue())
    assert ckpt.checkpoint_problem(path) is None  # the checksum is fine: only weights_only stops it
    with pytest.raises(CheckpointError, match="safe loading refuses.*posix.system"):
        ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="none is usable"):
        ckpt.load_latest(str(tmp_path))
    assert not os.path.exists(sentinel)
    torch.load(path, weights_only=False)  # control: without weights_only the same file does run its code
    assert os.path.exists(sentinel)


def test_no_secret_in_logs_checkpoints_or_wandb_files(byte_data, tmp_path):
    """WANDB_API_KEY set and wandb in offline mode: the key appears in no file of the run dir and no output."""
    secret = "local-" + "0123456789abcdef" * 2 + "SECRETSENTINEL"
    run_dir = str(tmp_path / "run")
    proc = ok(WARM.run(["train.py", *args(byte_data, run_dir, "--train.max_steps=4", "--logging.wandb=offline")],
                       WANDB_API_KEY=secret))
    assert os.path.isdir(os.path.join(run_dir, "wandb"))  # wandb did write its offline files
    assert secret not in proc.stdout + proc.stderr
    n = 0
    for root, _, files in os.walk(run_dir):
        for name in files:
            n += 1
            assert secret.encode() not in open(os.path.join(root, name), "rb").read(), name
    assert n > 5


# ----------------------------------------------------------------------------- checkpoint protocol unit checks


def test_checkpoint_protocol_states(tmp_path):
    """What each crash state looks like to the loader: only complete, checksummed pairs count."""
    run_dir = str(tmp_path)
    state = {"model": {"w": torch.arange(4.0)}, "step": 2}
    ckpt.save_checkpoint(run_dir, state, keep_last=5)
    ckpt.save_checkpoint(run_dir, dict(state, step=4), keep_last=5)
    p4 = ckpt.checkpoint_path(run_dir, 4)
    digest, name = open(ckpt.marker_path(p4)).read().split()
    assert name == "ckpt_00000004.pt" and digest == hashlib.sha256(open(p4, "rb").read()).hexdigest()
    # a torn write (.tmp) and a lone marker are ignored and cleaned up
    open(ckpt.checkpoint_path(run_dir, 6) + ".tmp", "wb").write(b"half")
    open(ckpt.marker_path(ckpt.checkpoint_path(run_dir, 8)), "w").write("0" * 64 + "  ckpt_00000008.pt\n")
    loaded, bad = ckpt.load_latest(run_dir)
    assert loaded["step"] == 4 and bad == []
    assert sorted(ckpt.clean_incomplete(run_dir)) == sorted([ckpt.checkpoint_path(run_dir, 6) + ".tmp",
                                                             ckpt.marker_path(ckpt.checkpoint_path(run_dir, 8))])
    p10 = ckpt.checkpoint_path(run_dir, 10)
    # an unmarked .pt that does not load (foreign, torn copy): skipped for the older good one, reported as bad
    open(p10, "wb").write(open(p4, "rb").read()[:-100])
    loaded, bad = ckpt.load_latest(run_dir)
    assert loaded["step"] == 4 and not loaded["unverified"] and [b[0] for b in bad] == [p10]
    assert "no completion marker" in bad[0][1] and "not a torch.save archive" in bad[0][1]
    # an unmarked .pt that loads completely (an older nanoptim's checkpoint): used, flagged as unverified
    open(p10, "wb").write(open(p4, "rb").read())
    loaded, bad = ckpt.load_latest(run_dir)
    assert loaded["path"] == p10 and loaded["unverified"] and bad == []
    # a marker that does not match is never overridden, even though the file itself would load
    open(ckpt.marker_path(p10), "w").write("0" * 64 + "  ckpt_00000010.pt\n")
    loaded, bad = ckpt.load_latest(run_dir)
    assert loaded["path"] == p4 and [b[0] for b in bad] == [p10] and "SHA-256 does not match" in bad[0][1]
    ckpt.set_aside(*bad[0], log=lambda *a: None)
    assert [s for s, _ in ckpt.list_checkpoints(run_dir)] == [4, 2]
    # keep_last prunes the .pt and its marker
    ckpt.save_checkpoint(run_dir, dict(state, step=12), keep_last=1)
    assert sorted(os.listdir(run_dir)) == ["ckpt_00000010.pt.corrupt", "ckpt_00000012.pt", "ckpt_00000012.sha256"]
    # the marker is sha256sum-compatible
    proc = subprocess.run(["sha256sum", "-c", "ckpt_00000012.sha256"], cwd=run_dir, capture_output=True, text=True)
    assert proc.returncode == 0 and "OK" in proc.stdout
