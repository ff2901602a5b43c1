"""Checkpoints: atomic, checksummed writes, keep-last-N, and loading that never trusts a half-written or foreign file.

A checkpoint after `step` optimizer steps (the next step to run) is a pair of files in the run directory:

    ckpt_00000100.pt       torch.save of a dict: model and optimizer state dicts, step, RNG states, counters, config
    ckpt_00000100.sha256   "<sha256>  ckpt_00000100.pt" (`sha256sum` format): the completed-marker, like llm.c's
                           DONE_<step> file, but it also pins the exact bytes (`sha256sum -c` checks it by hand)

Write protocol (save_checkpoint), each stage committed by an fsync + rename:
  1. torch.save streams into ckpt_X.pt.tmp while the bytes are hashed; fsync.
  2. the marker ckpt_X.sha256 is written (tmp, fsync, rename).
  3. ckpt_X.pt.tmp is renamed to ckpt_X.pt and the directory fsynced.
  4. checkpoints beyond keep_last are deleted, .pt first, marker second.
A crash (SIGKILL, power loss) at any point therefore leaves a `.tmp` file, a marker without its .pt, or a complete
pair; the first two are ignored and cleaned up. Because the marker is written *before* the .pt appears, a .pt
without a marker was not written by this protocol (a checkpoint from an older nanoptim, a copy, or a foreign file:
load_latest accepts it only if it loads as a complete checkpoint), and one whose SHA-256 differs from its marker was
damaged or altered: it is never loaded. Checkpoints are read with torch.load(weights_only=True), which refuses
pickled code (a malicious .pt cannot run anything).
"""

import glob
import hashlib
import os
import pickle
import re
import zipfile

import torch

from atomic import atomic_write, fsync_dir
from errors import CheckpointError
from model import unwrapped_name

CKPT_PATTERN = re.compile(r"^ckpt_(\d{8})\.pt$")
FORMAT_VERSION = 1
HASH_CHUNK = 1 << 24  # read 16 MiB at a time when verifying


def checkpoint_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, f"ckpt_{step:08d}.pt")


def marker_path(ckpt_path: str) -> str:
    """ckpt_X.pt -> ckpt_X.sha256 (the completed-marker)."""
    return ckpt_path[:-len(".pt")] + ".sha256" if ckpt_path.endswith(".pt") else ckpt_path + ".sha256"


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every ckpt_<step>.pt in run_dir, newest first, good or not (see checkpoint_problem)."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), "ckpt_*.pt")):
        m = CKPT_PATTERN.match(os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found, reverse=True)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class _HashingWriter:
    """A write-only file wrapper that hashes what passes through (torch.save needs only write and flush).

    It also remembers an OSError from the file: torch.save's C++ writer turns it into a RuntimeError that no
    longer says "No space left on device", so save_checkpoint re-raises the original.
    """

    def __init__(self, f):
        self.f, self.sha, self.error = f, hashlib.sha256(), None

    def write(self, data) -> int:
        self.sha.update(data)
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def file_sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def save_checkpoint(run_dir: str, state: dict, keep_last: int, protect: str | None = None) -> str:
    """Write state as ckpt_<state['step']>.pt + its .sha256 marker (protocol in the module docstring), then delete
    all but the newest keep_last checkpoints, never `protect` (the newest good one, see resume.py). Returns the .pt
    path.

    Raises CheckpointError, with the previous checkpoints intact, if a write fails (disk full, read-only or
    unwritable run directory).
    """
    state = dict(state, format_version=FORMAT_VERSION)
    path = checkpoint_path(run_dir, state["step"])
    tmp, marker = path + ".tmp", marker_path(path)
    try:
        try:
            with open(tmp, "wb") as f:
                w = _HashingWriter(f)
                try:
                    torch.save(state, w)
                except Exception:
                    if w.error is not None:
                        raise w.error from None
                    raise
                f.flush()
                os.fsync(f.fileno())
            if os.path.exists(path):  # re-saving a step: the old pair must not look complete with the new marker
                os.remove(path)
            name = os.path.basename(path)
            atomic_write(marker, lambda m: m.write(f"{w.sha.hexdigest()}  {name}\n".encode()))
            os.replace(tmp, path)
        except BaseException:
            _remove_quietly(tmp)
            raise
    except OSError as e:
        raise CheckpointError(
            f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoint is intact; "
            f"free disk space or fix permissions of {run_dir}, then rerun the same command to resume") from None
    fsync_dir(os.path.abspath(run_dir))
    for _, old in list_checkpoints(run_dir)[keep_last:]:
        if protect is not None and os.path.abspath(old) == os.path.abspath(protect):
            continue
        _remove_quietly(old)  # the .pt first: a crash in between leaves a lone marker, which is ignored
        _remove_quietly(marker_path(old))
    return path


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a complete checkpoint written by save_checkpoint (None = its marker matches it)."""
    marker = marker_path(path)
    if not os.path.isfile(marker):
        return (f"it has no completion marker {os.path.basename(marker)}, so it was not written (or not finished) "
                f"by train.py")
    try:
        with open(marker, encoding="utf-8", errors="replace") as f:
            expected = f.read().split()
    except OSError as e:
        return f"its marker {os.path.basename(marker)} cannot be read ({e.strerror or e})"
    if len(expected) != 2 or expected[1] != os.path.basename(path) or not re.fullmatch(r"[0-9a-f]{64}", expected[0]):
        return f"its marker {os.path.basename(marker)} is malformed"
    if file_sha256(path) != expected[0]:
        return "its SHA-256 does not match its marker (the file is damaged or was altered)"
    return None


class _Unreadable(Exception):
    """What is wrong with a checkpoint file's contents (a phrase: "it ..."); callers add the path and the fix."""


def _read(path: str, map_location) -> dict:
    """torch.load(weights_only=True) of a train.py checkpoint, or _Unreadable saying why it is not one."""
    if not zipfile.is_zipfile(path):  # every torch.save since 1.6 is a zip archive; a torn write has no directory
        raise _Unreadable("it is not a torch.save archive (no zip directory: truncated, or another kind of file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # any failure to unpickle means "not a usable checkpoint"
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        if isinstance(e, pickle.UnpicklingError) and lines and lines[0].startswith("Weights only load failed"):
            # torch's message suggests weights_only=False; name the refused object instead.
            why = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0])
            raise _Unreadable(f"it holds pickled objects that safe loading refuses ({why[:200]}), so it was not "
                              f"written by train.py; do not load it unless you trust its source") from None
        raise _Unreadable(f"it cannot be read ({(lines[0][:200] if lines else type(e).__name__)})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "step" not in state:
        raise _Unreadable("it is not a nanoptim checkpoint (no model/step entries)")
    state["model"] = {unwrapped_name(k): v for k, v in state["model"].items()}
    return state


def load_checkpoint(path: str, map_location="cpu", verify: bool = True) -> dict:
    """Load one checkpoint file safely; strip torch.compile/DDP prefixes from the model keys.

    verify=True checks the .sha256 marker first (required); verify=False skips it for a file the caller already
    verified, or for a lone .pt copied out of a run directory (sample.py), still with weights_only=True.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; pass a ckpt_*.pt file or a run directory")
    if verify:
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"{path} is not a usable checkpoint: {problem}; delete it, or if you trust it, "
                                  f"recreate the marker with `sha256sum {os.path.basename(path)} > "
                                  f"{os.path.basename(marker_path(path))}` in its directory")
    try:
        return _read(path, map_location)
    except _Unreadable as e:
        raise CheckpointError(f"{path} is not a usable checkpoint: {e}; point to a ckpt_*.pt written by "
                              f"train.py") from None


def _check_zip_crcs(path: str) -> None:
    """_Unreadable unless every member of the archive matches its CRC32 (a damaged file without a marker)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, RuntimeError) as e:
        raise _Unreadable(f"it is not a readable archive ({e})") from None
    if bad is not None:
        raise _Unreadable(f"its entry {bad} fails its CRC32 check (the file is damaged)")


def _check_finite(state: dict) -> None:
    """_Unreadable if a weight or an optimizer state tensor is inf/NaN: resuming from it could only give NaN."""
    def tensors(x):
        if torch.is_tensor(x):
            yield x
        elif isinstance(x, dict):
            for v in x.values():
                yield from tensors(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from tensors(v)

    for where in ("model", "optimizer"):
        for t in tensors(state.get(where)):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise _Unreadable(f"its {where} state holds non-finite values (inf/NaN)")


def load_latest(run_dir: str, map_location="cpu") -> tuple[dict | None, list[tuple[str, str]]]:
    """(the newest usable checkpoint in run_dir or None, [(path, problem)] of the bad checkpoints newer than it).

    Usable: its .sha256 marker matches and it loads. A .pt with no marker at all is accepted only if it loads as a
    complete checkpoint (zip directory present, weights_only unpickling, model/step entries): it was written by a
    nanoptim from before the markers, or copied without its marker; such a state has "unverified": True. (The
    write protocol itself never leaves an unmarked .pt behind: a torn write is a .tmp.) A marker that does not
    match is never overridden. The state's "path" entry says which file it came from. The caller decides what to
    do with the bad ones (train.py renames them with set_aside once it has checked that the usable one fits). If
    the run directory holds checkpoints and none is usable, raises CheckpointError rather than letting the run
    silently start over. Writes nothing.
    """
    problems = []  # (path, problem) of the bad checkpoints newer than the one being tried
    for _, path in list_checkpoints(run_dir):
        problem = checkpoint_problem(path)
        unmarked = problem is not None and not os.path.exists(marker_path(path))
        if problem is None or unmarked:
            try:
                if unmarked and zipfile.is_zipfile(path):  # no checksum to trust: the zip's own CRC32s must hold
                    _check_zip_crcs(path)  # (torch.save writes them); a non-zip file is named by _read
                state = _read(path, map_location)  # its checksum has just been verified (or it has none)
                _check_finite(state)
            except _Unreadable as e:
                problem = f"{problem}, and {e}" if unmarked else str(e)
            else:
                state["path"], state["unverified"] = path, unmarked
                return state, problems
        problems.append((path, problem))
    if problems:
        path, problem = problems[0]
        raise CheckpointError(f"{run_dir} holds checkpoints but none is usable ({os.path.basename(path)}: "
                              f"{problem}); delete the bad ckpt_*.pt files to start over, or use another "
                              f"--logging.run_dir")
    return None, []


def set_aside(path: str, problem: str, log=print, suffix: str = ".corrupt") -> None:
    """Rename a checkpoint not to resume from to *.pt.corrupt (or `suffix`): kept for inspection, never listed (so
    keep_last ignores it)."""
    log(f"warning: not resuming from {path}: {problem}; renamed it to {os.path.basename(path)}{suffix}")
    os.replace(path, path + suffix)
    _remove_quietly(marker_path(path))


def clean_incomplete(run_dir: str) -> list[str]:
    """Delete what a crashed write leaves behind: *.tmp files and markers without their .pt. Returns the paths."""
    removed = []
    for tmp in glob.glob(os.path.join(glob.escape(run_dir), "*.tmp")):
        _remove_quietly(tmp)
        removed.append(tmp)
    for marker in glob.glob(os.path.join(glob.escape(run_dir), "ckpt_*.sha256")):
        if not os.path.exists(marker[:-len(".sha256")] + ".pt"):
            _remove_quietly(marker)
            removed.append(marker)
    return removed
