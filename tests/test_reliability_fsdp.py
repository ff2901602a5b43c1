"""Reliability under FSDP (train.parallel = "fsdp"): kill-anywhere and resume-at-another-world-size, for real, through
train.py under torchrun on 2 gloo processes (CPU), with the fault machinery of tests/test_reliability.py
(tests/reliability_faults/sitecustomize.py, its KILL_POINTS and its comparison helpers).

How the faults apply with two ranks. Under FSDP every rank takes part in gathering a checkpoint's full state dicts
(parallel.full_state_dicts), then rank 0 alone writes it (resume.save_checkpoint, checkpoint.save_checkpoint): the
torch.save / os.replace / os.remove faults of the checkpoint protocol therefore fire in rank 0, while a mid-step
SIGKILL (clip_grad_norm_, after backward, before the update) can hit either rank. When one worker dies, the other
fails in its next collective (gloo: "connection reset by peer") or is sent SIGTERM by torchrun's agent, which then
exits non-zero (plain torchrun, no restarts) or restarts the whole group (run.sh: `launch.py --max-restarts`).

FSDP on the CPU is deterministic: the same 2-rank FSDP run twice gives the same losses, weights and optimizer state
bit for bit (checked before writing these tests, and by every kill test below, whose resumed runs are compared with
exact equality against one uninterrupted run). A resume under another world size or without sharding is compared
within fp32 tolerance instead: the gradients are then summed in another order (another split of the batch over
ranks, reduce-scatter against one process's sum, NS on another owner).

The model is the tiny one of test_reliability (2 layers, width 32, context 32, byte vocabulary); the cost is the
launches (a torchrun start-up is most of ~10 s), so each test launches as few times as its claim allows.
"""

import os
import random
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import test_reliability as rel
import torch
from conftest import ROOT, corpus_text, write_splits

import checkpoint as ckpt

pytestmark = pytest.mark.slow  # torchrun launches: a few minutes in all

FSDP = ["--train.parallel=fsdp"]


def torchrun(nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py"]


def launch(data_dir, run_dir, *extra, nproc=2, faults=None):
    """train.py under plain torchrun (no restarts) with FSDP and the fault hooks; never raises on failure."""
    return rel.run([*torchrun(nproc), *rel.args(data_dir, run_dir, *FSDP, *extra)], faults=faults)


def newest_good(run_dir):
    """The step of the newest checkpoint that passes its checks (what a launch must resume from), or None."""
    if not os.path.isdir(run_dir):
        return None
    good = [step for step, path in ckpt.list_checkpoints(run_dir) if ckpt.checkpoint_problem(path) is None]
    return good[0] if good else None


def assert_resumed_from(proc, step):
    if step is None:
        assert "resumed from step" not in proc.stdout, proc.stdout[-1500:]
    else:
        assert f"resumed from step {step} " in proc.stdout, (step, proc.stdout[-1500:], proc.stderr[-1500:])


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory):
    """test_reliability's data: tinyshakespeare as bytes (ids < 128), 200k train and 20k val tokens."""
    tokens = np.frombuffer(corpus_text().encode("ascii", "replace"), dtype=np.uint8).astype(np.uint16)
    return write_splits(tmp_path_factory.mktemp("bytes"), "bytes", tokens, 200_000, 20_000)


@pytest.fixture(scope="module")
def fsdp_reference(byte_data, tmp_path_factory):
    """The uninterrupted 2-rank FSDP run (30 steps) every killed-and-resumed FSDP run must reproduce bit for bit."""
    run_dir = str(tmp_path_factory.mktemp("fsdp_reference") / "run")
    rel.ok(launch(byte_data, run_dir))
    return run_dir


# ----------------------------------------------------------------------------- kill anywhere

# The kill points of test_reliability.KILL_POINTS that involve the sharded state, with the rank that dies: a step
# (forward/backward with their all-gathers and reduce-scatters; rank 1, the rank that neither logs nor writes), and
# every stage of writing a checkpoint gathered from the shards (rank 0, the only writer). In this order each one
# fires before the run ends (asserted), whatever n the seed draws. Rank 0 killed mid-run is the external SIGKILL
# test below. (The start-up and final.json kill points are rank 0 writing small files, the same code under ddp and
# fsdp: test_reliability covers them.)
FSDP_KILLS = [("mid-step", 1), ("torn checkpoint write", 0), ("marker committed, .pt not renamed", 0),
              ("mid-pruning", 0), ("before the marker commits", 0), ("checkpoint committed, before pruning", 0)]


def test_fsdp_kill_anywhere_resumes_bit_exact(byte_data, fsdp_reference, tmp_path):
    """Under FSDP on 2 ranks, SIGKILL of one worker at seeded points: mid-step (rank 1), a torn checkpoint
    write, between the commit stages of the checkpoint protocol, mid-pruning (rank 0, the writer). Each time torchrun
    stops the other rank and fails; rerunning the same command resumes from the newest good checkpoint (its step
    asserted), and once final.json exists the losses, final weights and optimizer state equal the uninterrupted
    FSDP run bit for bit."""
    r = random.Random(0)
    run_dir = str(tmp_path / "run")
    for i, (name, rank) in enumerate(FSDP_KILLS):
        fired = str(tmp_path / f"fired_{i}")  # created by the fault as it fires
        fault = dict(rel.KILL_POINTS[name](r), rank=rank, once=fired)
        before = newest_good(run_dir)
        proc = launch(byte_data, run_dir, faults=[fault])
        assert proc.returncode != 0 and os.path.exists(fired), (name, fault, proc.returncode, proc.stderr[-2000:])
        assert "Signal 9 (SIGKILL) received by PID" in proc.stderr, (name, fault, proc.stderr[-2000:])
        assert not os.path.exists(os.path.join(run_dir, "final.json")), name
        assert_resumed_from(proc, before)
        print(f"{name} ({fault}): resumed from {before}, killed; newest good checkpoint now {newest_good(run_dir)}")
    before = newest_good(run_dir)
    proc = rel.ok(launch(byte_data, run_dir))
    assert_resumed_from(proc, before)
    rel.assert_bit_identical(run_dir, fsdp_reference)
    rel.assert_clean_and_verified(run_dir)


def _workers(run_dir):
    """{RANK: pid} of the live train.py workers of run_dir (torchrun's children, found through /proc)."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"train.py" in cmd and f"--logging.run_dir={run_dir}".encode() in cmd and b"RANK" in environ \
                and b"TORCHELASTIC_RUN_ID" in environ:
            out[int(environ[b"RANK"])] = int(pid)
    return out


def test_fsdp_external_sigkill_of_a_worker_is_restarted_by_run_sh(byte_data, fsdp_reference, tmp_path):
    """run.sh with NPROC=2 under FSDP: the test SIGKILLs rank 0 (the rank that logs and writes the checkpoints) when
    it reports a seeded step, whatever it is doing then; torchrun (run.sh's --max-restarts) stops rank 1 and
    restarts the group, which resumes from the newest checkpoint of that moment and finishes bit-identical to the
    uninterrupted FSDP run."""
    target, rank = random.Random(3).randrange(3, rel.MAX_STEPS - 3), 0
    run_dir = str(tmp_path / "run")
    lines, killed = [], None
    with open(tmp_path / "stderr", "w+") as stderr:  # a file: the killed group's tracebacks never block the pipe
        proc = subprocess.Popen(["bash", "run.sh", *rel.args(byte_data, run_dir, *FSDP)], cwd=ROOT,
                                env=rel.env(NPROC="2", PYTHON=sys.executable), stdout=subprocess.PIPE,
                                stderr=stderr, text=True, start_new_session=True)
        try:
            for line in proc.stdout:
                lines.append(line)
                m = re.match(r"step (\d+)/", line)
                if killed is None and m and int(m.group(1)) >= target:
                    killed = int(m.group(1))
                    os.kill(_workers(run_dir)[rank], signal.SIGKILL)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        stderr.seek(0)
        err = stderr.read()
    out = "".join(lines)
    assert proc.returncode == 0, (proc.returncode, out[-2000:], err[-3000:])
    assert killed is not None
    # "step k/" is printed after step k's update; the checkpoint of step k - k % 2 was committed before it, and the
    # workers, stopped at their next collective, cannot have completed one beyond step k + 2
    resumed = [int(s) for s in re.findall(r"resumed from step (\d+) ", out)]
    print(f"rank {rank} SIGKILLed at step {killed}; the restarted group resumed from step {resumed}")
    assert len(resumed) == 1 and killed - killed % 2 <= resumed[0] <= killed + 2, (killed, resumed, out[-2000:])
    rel.assert_bit_identical(run_dir, fsdp_reference)
    rel.assert_clean_and_verified(run_dir)


# ----------------------------------------------------------------------------- another world size

WS_OPTIMIZERS = {
    "adamw": [],
    # Newton–Schulz in fp32 (auto is bf16 on AMX CPUs, whose rounding would hide fp32-level agreement); under FSDP
    # each matrix's NS runs on one owner rank, chosen anew for each world size. The standard iteration: Gram NS (fp32
    # "auto") amplifies the world sizes' fp32-level gradient differences in the tiny singular values it squares, to
    # 1.2e-3 of the distance moved against this test's 1e-3 (docs/optimizers.md §5.7)
    "lionmuon": ["--optimizer.betas=[0.9, 0.99]", "--optimizer.weight_decay=0.1", "--optimizer.lion_lr=1e-3",
                 "--optimizer.ns_dtype=float32", "--optimizer.ns_method=standard"],
}
# Where the step-4 checkpoint of the 2-rank FSDP run resumes: (launcher processes, extra arguments). One process
# without sharding for both optimizers; FSDP on 2 ranks again (bit-exact) and on 4 for the NS optimizer only (test
# time: 4 processes on 2 cores; adamw's 2 → 2 is the kill test above).
WS_RESUMES = {
    "adamw": {"one process": (1, ["--train.parallel=ddp"])},
    "lionmuon": {"one process": (1, ["--train.parallel=ddp"]), "fsdp 2": (2, FSDP), "fsdp 4": (4, FSDP)},
}


def _weights_at(run_dir, step):
    return ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir, step))["model"]


@pytest.mark.parametrize("optimizer", sorted(WS_OPTIMIZERS))
def test_fsdp_checkpoint_resumes_at_another_world_size(byte_data, tmp_path, optimizer):
    """An uninterrupted 2-rank FSDP run of 8 steps checkpoints at step 4; that checkpoint (the run dir as a crash
    after step 7 leaves it: ckpt 8 and final.json gone) resumes in one unsharded process, under FSDP on 2 ranks and,
    for lionmuon, on 4. Each launch resumes from step 4; its next losses and final weights equal the uninterrupted
    run's: bit for bit on the same 2 ranks, within fp32 rounding on another world size (the batch is split another
    way, so the gradient sums and NS owners differ)."""
    extra = ["--train.max_steps=8", "--checkpoint.interval=4", f"--optimizer.name={optimizer}",
             "--model.dropout=0.0", *WS_OPTIMIZERS[optimizer]]  # dropout's masks depend on the batch's split
    straight = str(tmp_path / "straight")
    rel.ok(rel.run([*torchrun(2), *rel.args(byte_data, straight, *FSDP, *extra)]))
    ref_train, ref_eval = rel.records(straight)
    assert sorted(ref_train) == list(range(8)) and sorted(ref_eval) == [0, 4, 8]
    at4, ref_final = _weights_at(straight, 4), _weights_at(straight, 8)
    for name, (nproc, how) in WS_RESUMES[optimizer].items():
        run_dir = str(tmp_path / name.replace(" ", "_"))
        shutil.copytree(straight, run_dir)
        for path in (ckpt.checkpoint_path(run_dir, 8), ckpt.marker_path(ckpt.checkpoint_path(run_dir, 8)),
                     os.path.join(run_dir, "final.json")):
            os.remove(path)
        launcher = torchrun(nproc) if nproc > 1 else [sys.executable, "train.py"]
        proc = rel.ok(rel.run([*launcher, *rel.args(byte_data, run_dir, *extra, *how)]))
        assert "resumed from step 4 " in proc.stdout and "step 0/8" not in proc.stdout, (name, proc.stdout[-1500:])
        assert f"{nproc} process(es)" in proc.stdout, name
        got_train, got_eval = rel.records(run_dir)
        assert sorted(got_train) == list(range(8)) and sorted(got_eval) == [0, 4, 8], name
        final = _weights_at(run_dir, 8)
        moved = torch.cat([(ref_final[k] - at4[k]).flatten() for k in ref_final]).norm()
        diff = torch.cat([(final[k] - ref_final[k]).flatten() for k in ref_final]).norm()
        worst = max(abs(got_train[s] - ref_train[s]) / abs(ref_train[s]) for s in range(4, 8))
        print(f"{optimizer} fsdp 2 -> {name}: max relative loss difference {worst:.2e}, final weights "
              f"{diff / moved:.2e} of the distance moved after step 4")
        if name == "fsdp 2":
            assert (got_train, got_eval) == (ref_train, ref_eval), name
            a, b = (ckpt.load_checkpoint(ckpt.checkpoint_path(d, 8)) for d in (run_dir, straight))
            rel.assert_same_tensors(a["model"], b["model"], "model")
            rel.assert_same_tensors(a["optimizer"], b["optimizer"], "optimizer")
            continue
        for step in range(8):
            assert got_train[step] == pytest.approx(ref_train[step], rel=2e-5, abs=1e-6), (name, step)
        assert got_eval[8] == pytest.approx(ref_eval[8], rel=2e-5, abs=1e-6), name
        assert diff <= 1e-3 * moved, (name, float(diff), float(moved))
