"""Checkpoints: atomic writes, keep-last-N, and loading that never trusts a half-written or foreign file.

A checkpoint is one file `RUN_DIR/ckpt_<step:08d>.pt` holding a dict of tensors and plain Python values
(model and optimizer state dicts, step, RNG states, counters, the resolved config). It is written to a
temporary name, fsynced, then renamed: the rename is the commit point, so a crash mid-write leaves only a
`.tmp` file that is never loaded. Files are read with `torch.load(weights_only=True)`, which refuses pickled
code. `step` in a checkpoint is the number of optimizer steps already taken (the next step to run).
"""

import glob
import os
import re

import torch

from errors import CheckpointError

CKPT_PATTERN = re.compile(r"^ckpt_(\d{8})\.pt$")
FORMAT_VERSION = 1


def checkpoint_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, f"ckpt_{step:08d}.pt")


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the committed checkpoints in run_dir, newest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), "ckpt_*.pt")):
        m = CKPT_PATTERN.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found, reverse=True)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, write_fn) -> None:
    """Call write_fn(file) on `path + '.tmp'`, fsync, rename over `path`. On any error the old `path` is untouched."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def save_checkpoint(run_dir: str, state: dict, keep_last: int) -> str:
    """Write state atomically as ckpt_<state['step']>.pt, then delete all but the newest keep_last checkpoints.

    Raises CheckpointError (with the previous checkpoints intact) if the write fails, e.g. disk full.
    """
    state = dict(state, format_version=FORMAT_VERSION)
    path = checkpoint_path(run_dir, state["step"])
    try:
        atomic_write_bytes(path, lambda f: torch.save(state, f))
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoint is intact; "
            f"free disk space or fix permissions of {run_dir}, then rerun the same command to resume") from None
    for _, old in list_checkpoints(run_dir)[keep_last:]:
        try:
            os.remove(old)
        except OSError:
            pass
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load one checkpoint file safely (weights_only=True); strip torch.compile/DDP prefixes from the model keys."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; pass a ckpt_*.pt file or a run directory")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means "not a usable checkpoint"
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable nanoptim checkpoint ({first}); "
                              f"delete it or point to another checkpoint") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{path} is not a nanoptim checkpoint (no model/step entries); "
                              f"point to a ckpt_*.pt written by train.py")
    state["model"] = strip_prefixes(state["model"])
    return state


def strip_prefixes(state_dict: dict) -> dict:
    """Remove `_orig_mod.` (torch.compile) and `module.` (DDP) key prefixes."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_latest(run_dir: str, map_location="cpu", log=print) -> dict | None:
    """The newest checkpoint in run_dir that loads; unreadable ones are reported and skipped. None if none."""
    for _, path in list_checkpoints(run_dir):
        try:
            return load_checkpoint(path, map_location)
        except CheckpointError as e:
            log(f"warning: skipping {e}")
    return None


def resolve_checkpoint(path: str) -> str:
    """A ckpt file, or a run dir (→ its newest checkpoint). For sample.py and --resume-from style use."""
    if os.path.isdir(path):
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"{path} holds no checkpoint (ckpt_*.pt); train first or pass another run dir")
        return found[0][1]
    return path
