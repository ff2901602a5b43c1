"""Fault injection for tests/test_reliability.py, with no hook in the product code.

Python imports `sitecustomize` at start-up from the first sys.path entry that has one, so a test puts this
directory on PYTHONPATH and describes faults in the environment variable NANOPTIM_TEST_FAULTS (a JSON list). The
real entry points (`python train.py`, `bash run.sh`, torchrun workers) then run unmodified, with a few library
functions wrapped in the train.py processes only (warm_cli.py calls install() directly in its forked children):

    hook "step"     torch.nn.utils.clip_grad_norm_ (called once per training step, after backward)
    hook "save"     torch.save (called once per checkpoint, by checkpoint.save_checkpoint)
    hook "replace"  os.replace, for destination paths matching "match" (the commit point of every atomic write)
    hook "remove"   os.remove, for paths matching "match" (keep_last pruning)
    hook "open"     builtins.open in a writing mode, for paths matching "match"
    hook "init"     torch.distributed.init_process_group

A fault fires at the n-th matching call in its process (1-based; "step" n = 5 is step 4 of a fresh run) and does
"action":
    kill           SIGKILL this process before the call (a crash: no cleanup, no exception handler runs)
    kill_after     SIGKILL right after the call returned
    partial_kill   (save) write the first half of the checkpoint's bytes, fsync, SIGKILL: a torn write
    partial_enospc (save) write the first half, then raise ENOSPC: the disk filled up mid-write
    enospc/eacces  raise OSError(ENOSPC / EACCES) instead of doing the call
    inf_grad       (step) write +inf into the first gradient before the norm is taken
    inf_weight     (step) write +inf into the first weight (the update keeps it non-finite)
    wreck_weights  (step) multiply every weight by 1e10: finite but wrecked (every later loss non-finite)
    starve_threads (init) pin the process to one CPU and give the threads the call started (gloo's run loops)
                   SCHED_IDLE: they run only while the main thread waits, so each releases a finished collective
                   only after the main thread has moved on, the worst case of that race, made certain
Optional keys: "rank" (fire only in the process with this RANK), "once" (a file path: fire only if it does not
exist yet, creating it first, so a restarted process runs clean).
"""

import json
import os
import sys


def install(faults):
    import builtins
    import errno
    import io
    import re
    import signal

    import torch

    counts = {}

    def due(hook, path=None):
        """The fault of `hook` that fires at this call, if any (counting only calls that match it)."""
        for i, f in enumerate(faults):
            if f["hook"] != hook or (f.get("rank") is not None and int(os.environ.get("RANK", "0")) != f["rank"]):
                continue
            if "match" in f and (path is None or not re.search(f["match"], os.fspath(path))):
                continue
            counts[i] = counts.get(i, 0) + 1
            if counts[i] != f.get("n", 1):
                continue
            once = f.get("once")
            if once:
                if os.path.exists(once):
                    continue
                open(once, "w").close()
            return f
        return None

    def die():
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def fail(action, path=None):
        code = {"enospc": errno.ENOSPC, "partial_enospc": errno.ENOSPC, "eacces": errno.EACCES}[action]
        raise OSError(code, os.strerror(code), path)

    real_clip = torch.nn.utils.clip_grad_norm_

    def clip_grad_norm_(parameters, *args, **kwargs):
        f = due("step")
        if f:
            parameters = list(parameters)
            if f["action"] == "kill":
                die()
            with torch.no_grad():
                if f["action"] == "inf_grad":
                    next(p for p in parameters if p.grad is not None).grad.view(-1)[0] = float("inf")
                elif f["action"] == "inf_weight":
                    parameters[0].view(-1)[0] = float("inf")
                elif f["action"] == "wreck_weights":
                    for p in parameters:
                        p.mul_(1e10)
        return real_clip(parameters, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = clip_grad_norm_

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        fault = due("save")
        if fault:
            if fault["action"] == "kill":
                die()
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f.write(data[:len(data) // 2])
            f.flush()
            if fault["action"] == "partial_kill":
                os.fsync(f.f.fileno())  # f is checkpoint._HashingWriter around the real file
                die()
            fail(fault["action"])
        return real_save(obj, f, *args, **kwargs)

    torch.save = save

    real_replace, real_remove, real_open = os.replace, os.remove, builtins.open

    def replace(src, dst, *args, **kwargs):
        f = due("replace", dst)
        if f and f["action"] == "kill":
            die()
        if f and f["action"] in ("enospc", "eacces"):
            fail(f["action"], dst)
        out = real_replace(src, dst, *args, **kwargs)
        if f and f["action"] == "kill_after":
            die()
        return out

    def remove(path, *args, **kwargs):
        f = due("remove", path)
        if f and f["action"] == "kill":
            die()
        out = real_remove(path, *args, **kwargs)
        if f and f["action"] == "kill_after":
            die()
        return out

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            f = due("open", file)
            if f:
                if f["action"] == "kill":
                    die()
                fail(f["action"], os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    os.replace, os.remove, builtins.open = replace, remove, open_

    import torch.distributed as dist

    real_init = dist.init_process_group

    def init_process_group(*args, **kwargs):
        f = due("init")
        before = set(os.listdir("/proc/self/task"))
        out = real_init(*args, **kwargs)
        if f and f["action"] == "starve_threads":
            cpu = {min(os.sched_getaffinity(0))}
            for tid in os.listdir("/proc/self/task"):  # (affinity is per thread)
                os.sched_setaffinity(int(tid), cpu)
                if tid not in before:
                    os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
        return out

    dist.init_process_group = init_process_group


_spec = os.environ.get("NANOPTIM_TEST_FAULTS")
if _spec and os.path.basename(sys.argv[0] if sys.argv else "") == "train.py":
    install(json.loads(_spec))
