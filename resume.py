"""Resume and save for train.py: which checkpoint a run continues from, whether it fits, what the run directory may
hold, and the cross-rank agreement that makes every rank take the same decision. checkpoint.py is the file protocol
(atomic, checksummed writes; safe loading); this module is the policy around it.

Order of a start (train.py calls these in this order; nothing is written before step 3):
  1. `choose_checkpoint` (rank 0 decides, the others learn the path): refuse a run directory that holds another
     run, find the newest good checkpoint, note the bad newer ones;
  2. `apply_checkpoint` on every rank: check that it fits the model and optimizer, load it, restore the counters
     and RNG into a TrainingState;
  3. `prepare_run_dir` on rank 0: lock the run directory (one writer per run dir: `lock_run_dir`), set the bad
     checkpoints aside, clean up a crashed write, write config.toml.
`save_checkpoint` writes a checkpoint of a TrainingState, never one of non-finite weights.
"""

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import checkpoint as ckpt
import launch
import parallel
from atomic import atomic_write
from config import BRANCH_CHANGES, RESUMABLE_CHANGES, differences, load_config, to_dict, to_toml
from errors import ERRORS, CheckpointError, ConfigError, NanoptimError, NonFiniteError, RunDirError
from flops import FlopsCounter

# train.nonfinite = "skip": after a skipped step the run is "recovering" until it has taken this many updates in a
# row. Checkpoints written while recovering are kept (a crash resumes from them) but are not "good": the newest good
# checkpoint is never pruned, and it is the one the non-finite errors name (a streak of skips can leave the weights
# finite but wrecked, and a checkpoint of those would only give NaN again).
RECOVERY_STEPS = 10


@dataclass
class TrainingState:
    """What a checkpoint carries besides the model and optimizer: the loop's counters."""

    counters: FlopsCounter
    start_step: int = 0  # the step this invocation starts at (the checkpoint's step)
    best_val: float = float("inf")
    elapsed_s: float = 0.0  # training compute time (evaluation and checkpointing excluded), summed over resumes
    wall_s: float = 0.0  # wall time of the invocations up to the checkpoint, summed (final.json's wall_s)
    skipped: int = 0  # steps skipped for non-finite values (train.nonfinite = "skip")
    last_good: str | None = None  # the newest good checkpoint (never pruned), named in the non-finite errors
    steps_since_skip: int | None = None  # updates taken since the last skipped step; None = none skipped yet
    resumed: bool = False
    resumed_from: str | None = None  # the checkpoint.resume_from this run descends from (absolute path)
    target_reached: dict | None = None  # the first eval below train.target_val_loss: step, tokens, FLOPs, val_loss
    code: dict | None = None  # metrics.code_version() of this invocation (checkpoints and final.json record it)
    cooldown_start: int | None = None  # a cooldown branch: the step its wsd cooldown starts at (the branch point)
    branched_from: str | None = None  # a cooldown branch: the checkpoint it started from (absolute path)

    @property
    def healthy(self) -> bool:
        """No skipped step, or RECOVERY_STEPS updates in a row since the last one: a checkpoint written now is good."""
        return self.steps_since_skip is None or self.steps_since_skip >= RECOVERY_STEPS

    def last_good_text(self) -> str:
        if not self.last_good:
            return "no good checkpoint had been written yet"
        return f"the last good checkpoint {self.last_good} is intact"

    def resume_hint(self) -> str:
        """How to go on from the last good checkpoint with a lower learning rate."""
        if not self.last_good:
            return "lower optimizer.lr and start again"
        return (f"resume from it with a lower lr: --checkpoint.resume_from={self.last_good} "
                f"--checkpoint.allow_config_change=true --optimizer.lr=<lower>")


# -------------------------------------------------------------------------------------------------------------
# every rank agrees


def agree(ddp: bool, fn):
    """fn() on every rank. If it raises a NanoptimError on any rank, every rank raises it: no rank is left waiting in
    a collective for a peer that has already exited, and every rank reports the same one-line error."""
    error, result = None, None
    try:
        result = fn()
    except NanoptimError as e:
        error = e
    if ddp:
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, None if error is None else (type(error).__name__, str(error)))
        first = next((e for e in errors if e is not None), None)
        if first is not None and error is None:
            error = ERRORS.get(first[0], NanoptimError)(first[1])
    if error is not None:
        raise error
    return result


def from_master(ddp: bool, master: bool, fn):
    """fn() on rank 0 only; its (small, picklable) result, or its NanoptimError, reaches every rank."""
    box = [None]
    if master:
        try:
            box = [("ok", fn())]
        except NanoptimError as e:
            box = [("error", type(e).__name__, str(e))]
    if ddp:
        dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        raise ERRORS.get(box[0][1], NanoptimError)(box[0][2])
    return box[0][1]


# -------------------------------------------------------------------------------------------------------------
# checks


def check_run_dir(run_dir: str, cfg, log) -> None:
    """Refuse to mix two different runs in one directory (unless checkpoint.allow_config_change)."""
    saved = os.path.join(run_dir, "config.toml")
    if not os.path.exists(saved):
        return
    try:
        old = load_config(saved)
    except ConfigError as e:
        raise ConfigError(f"{saved} is damaged or no longer loads ({e}); the checkpoints are intact and carry their "
                          f"own config: `mv {saved} {saved}.damaged` and rerun the same command, which then checks "
                          f"this run's config against the newest checkpoint's") from None
    changed = differences(old, cfg)
    if not changed:
        return
    if cfg.checkpoint.allow_config_change:
        log(f"note: resuming {run_dir} with a changed config: {'; '.join(changed)}")
        return
    raise ConfigError(different_run_message(f"{run_dir} holds a different run", run_dir, changed))


def different_run_message(what: str, run_dir: str, changed: list[str]) -> str:
    """'<what> (the keys that differ); to start this run beside it: <the exact command>' plus, when the old run can
    continue under the new settings (same model and optimizer), the command for that."""
    n = 1
    while os.path.exists(f"{os.path.normpath(run_dir)}_{n + 1}"):
        n += 1
    fresh = f"{os.path.normpath(run_dir)}_{n + 1}"
    shown = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
    message = (f"{what} ({shown}); to start this run beside it: "
               f"`{launch.command_with(f'--logging.run_dir={fresh}')}`")
    if not any(c.startswith(("model.", "optimizer.method:", "data.")) for c in changed):
        message += f"; to continue that run with these settings: " \
                   f"`{launch.command_with(f'--logging.run_dir={run_dir}', '--checkpoint.allow_config_change=true')}`"
    return message


def check_checkpoint_fits(state: dict, path: str, mcfg, cfg) -> None:
    """Refuse a checkpoint written for another model shape or another optimizer, naming the difference."""
    saved = state.get("model_config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} has no model_config entry, so it was not written by train.py; "
                              f"use another --logging.run_dir")
    ours = vars(mcfg)
    changed = [f"{k} {saved.get(k)!r} -> {ours[k]!r}" for k in ours if k != "dropout" and saved.get(k) != ours[k]]
    if changed:
        raise CheckpointError(f"{path} was written for a different model ({', '.join(changed)}); resume with the "
                              f"same model settings, or use another --logging.run_dir")
    branch = is_branch_point(path, cfg)
    if (branch or not os.path.exists(os.path.join(cfg.logging.run_dir, "config.toml"))) and \
            isinstance(state.get("config"), dict):
        # no config.toml beside the checkpoints (or a branch's first start): compare with the checkpoint's config
        changed = differences(state["config"], cfg, ignore=RESUMABLE_CHANGES + (BRANCH_CHANGES if branch else ()))
        if branch and changed:
            raise ConfigError(f"schedule.cooldown_from = {path}: a cooldown branch must keep the run's settings "
                              f"except {', '.join(BRANCH_CHANGES)}; these differ: {'; '.join(changed[:4])}")
        if changed and not cfg.checkpoint.allow_config_change:
            raise ConfigError(different_run_message(f"{path} was written by a different run", cfg.logging.run_dir,
                                                    changed))
    saved_opt = (state.get("config") or {}).get("optimizer") or {}
    saved_method = saved_opt.get("method") or saved_opt.get("name")  # older checkpoints: name was the method
    if saved_method != cfg.optimizer.method:
        raise CheckpointError(f"{path} holds {saved_method!r} optimizer state, but this run's optimizer is "
                              f"{cfg.optimizer.method!r}; resume with --optimizer.name={saved_opt.get('name')}, or "
                              f"use another --logging.run_dir")


# -------------------------------------------------------------------------------------------------------------
# the three steps of a start


def choose_checkpoint(cfg, log) -> tuple[dict | None, list[tuple[str, str]]]:
    """Rank 0: (the state of the newest good checkpoint of the run dir or None, [(path, problem)] of newer bad ones).
    Writes nothing."""
    run_dir = cfg.logging.run_dir
    if not os.path.isdir(run_dir):
        return (_branch_point(cfg, log) if cfg.schedule.cooldown_from else None), []
    check_run_dir(run_dir, cfg, log)
    if ckpt.list_checkpoints(run_dir) and cfg.checkpoint.resume == "never":
        raise ConfigError(f"{run_dir} already holds checkpoints and checkpoint.resume = 'never'; "
                          f"use another --logging.run_dir or --checkpoint.resume=auto")
    state, bad = ckpt.load_latest(run_dir, map_location="cpu")
    if state is None and cfg.schedule.cooldown_from:
        return _branch_point(cfg, log), bad
    if cfg.checkpoint.resume_from:
        if state is not None and state.get("resumed_from") == os.path.abspath(cfg.checkpoint.resume_from):
            # the same command again (a restart after a crash): the newest checkpoint already descends from it
            log(f"note: checkpoint.resume_from was applied by an earlier launch; resuming from the newest, "
                f"{state['path']}")
        else:
            return _resume_from(cfg, log)
    if state is not None and state["unverified"]:
        log(f"warning: {state['path']} has no .sha256 completion marker (written by an older nanoptim, or "
            f"copied without it); it reads as a complete checkpoint, so the run resumes from it")
    return state, bad


def is_branch_point(path: str | None, cfg) -> bool:
    return bool(path and cfg.schedule.cooldown_from
                and os.path.abspath(path) == os.path.abspath(cfg.schedule.cooldown_from))


def _branch_point(cfg, log) -> dict:
    """schedule.cooldown_from: the stable-phase checkpoint of another run that this run (a cooldown branch, in its
    own run directory) starts from; the checks that it is one, before anything is written."""
    path, s = cfg.schedule.cooldown_from, cfg.schedule
    if s.kind != "wsd":
        raise ConfigError(f"schedule.cooldown_from needs schedule.kind = 'wsd' (a branch cools down from a "
                          f"stable phase), not {s.kind!r}; add --schedule.kind=wsd")
    if not os.path.isfile(path):
        raise ConfigError(f"schedule.cooldown_from = {path!r} does not exist (from {os.getcwd()}); name a "
                          f"RUN_DIR/ckpt_*.pt of the run to branch from")
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(cfg.logging.run_dir):
        raise ConfigError(f"schedule.cooldown_from = {path!r} is in this run's own directory; a branch needs its "
                          f"own --logging.run_dir (the default run_dir gives it one)")
    state = ckpt.load_checkpoint(path, map_location="cpu")
    state["path"], state["unverified"] = path, False
    step, source = state["step"], (state.get("config") or {}).get("schedule") or {}
    src_max = (state.get("config") or {}).get("train", {}).get("max_steps", 0)
    src_decay = src_max - max(1, round(source.get("decay_fraction", 0.2) * src_max))
    if source.get("kind") != "wsd" or step < source.get("warmup_steps", 0) or step > src_decay \
            or state.get("cooldown_start") is not None:
        raise ConfigError(f"{path} (step {step}) is not in the stable phase of a wsd run (its schedule: "
                          f"{source.get('kind')}, warmup {source.get('warmup_steps')}, cooldown from step "
                          f"{src_decay}); branch from a checkpoint between warmup and the cooldown")
    if cfg.train.max_steps <= step:
        raise ConfigError(f"train.max_steps = {cfg.train.max_steps} must exceed the branch point {step}: the "
                          f"cooldown runs from step {step} to max_steps")
    log(f"cooldown branch from {path} (step {step}): wsd cooldown over steps {step}..{cfg.train.max_steps}")
    return state


def _resume_from(cfg, log) -> tuple[dict, list[tuple[str, str]]]:
    """checkpoint.resume_from: that checkpoint of the run dir, not the newest; the newer ones are abandoned (renamed
    *.pt.abandoned by prepare_run_dir) so that a later automatic resume cannot go back to them."""
    run_dir, path = cfg.logging.run_dir, cfg.checkpoint.resume_from
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(run_dir):
        raise ConfigError(f"checkpoint.resume_from = {path!r} is not in the run dir {run_dir}; name one of its "
                          f"ckpt_*.pt files")
    state = ckpt.load_checkpoint(path, map_location="cpu")
    state["path"], state["unverified"] = path, False
    newer = [(p, "abandoned: the run resumed from an older checkpoint (checkpoint.resume_from)")
             for step, p in ckpt.list_checkpoints(run_dir) if step > state["step"]]
    log(f"resuming from {path} (checkpoint.resume_from); {len(newer)} newer checkpoint(s) will be set aside")
    return state, newer


def apply_checkpoint(state: dict | None, path: str | None, model, optimizer, mcfg, cfg, counters: FlopsCounter,
                     rank: int, device_type: str) -> TrainingState:
    """Load the checkpoint at `path` (rank 0 passes the state it already read) into model and optimizer, and return
    the loop's counters; a fresh TrainingState when path is None."""
    run = TrainingState(counters=counters)
    if path is None:
        return run
    if state is None:  # not rank 0
        if not os.path.isfile(path):
            raise CheckpointError(f"rank {rank} cannot see {path}, which rank 0 resumes from; put "
                                  f"logging.run_dir on a filesystem that every node shares")
        state = ckpt.load_checkpoint(path, map_location="cpu", verify=False)  # rank 0 verified it
    check_checkpoint_fits(state, path, mcfg, cfg)
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        if parallel.is_sharded(model):  # FSDP: the full state dicts of any run, each rank keeping its rows
            parallel.load_full_state(model, optimizer, state["model"], state["optimizer"])
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} does not fit this model/optimizer "
                              f"({str(e).splitlines()[0][:160]}); use another --logging.run_dir") from None
    # load_state_dict also restores the saved hyperparameters; the config's own win (they are equal unless
    # checkpoint.allow_config_change let them change). Counters the optimizer keeps in its groups stay.
    for group, new in zip(optimizer.param_groups, fresh):
        group.update({k: v for k, v in new.items() if k not in ("step", "lr")})
    counters.load_state_dict(state["counters"])
    run.start_step, run.best_val = state["step"], state["best_val_loss"]
    run.elapsed_s, run.skipped = state["elapsed_s"], state["skipped_steps"]
    run.wall_s = float(state.get("wall_s", 0.0))  # older checkpoints have none
    run.steps_since_skip = state.get("steps_since_skip")
    run.target_reached = state.get("target_reached")
    if is_branch_point(path, cfg):
        run.cooldown_start, run.branched_from = state["step"], os.path.abspath(path)
    else:
        run.cooldown_start, run.branched_from = state.get("cooldown_start"), state.get("branched_from")
    # a checkpoint written while recovering names the good one before it; older checkpoints were all good
    run.last_good = path if state.get("good", True) else state.get("last_good")
    run.resumed = True
    run.resumed_from = (os.path.abspath(cfg.checkpoint.resume_from) if cfg.checkpoint.resume_from
                        else state.get("resumed_from"))
    torch.set_rng_state(state["rng"]["torch"])
    if device_type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"][rank % len(state["rng"]["cuda"])])
    return run


# -------------------------------------------------------------------------------------------------------------
# one writer per run directory

LOCK_FILE = ".lock"
_LOCKS: dict[str, int] = {}  # realpath of a run dir -> the open lock file, held until unlock_run_dir or exit


def _process_identity(pid: int) -> str | None:
    """pid plus its start time (field 22 of /proc/<pid>/stat): unique on this host even when pids are reused."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f"{pid}:{f.read().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return None


def lock_run_dir(run_dir: str) -> None:
    """Take RUN_DIR/.lock with an exclusive fcntl.flock, held for the run: a second run into the same directory
    (on this node, or on any node where the filesystem supports flock) is refused at once, naming the holder. The
    kernel drops the lock when its process dies, however it dies, so a killed run never leaves a stale lock. The file
    records host, pid and start time; where flock is a no-op (some network filesystems), a record of a live process
    on this host is refused too."""
    key = os.path.realpath(run_dir)
    if key in _LOCKS:
        return
    path = os.path.join(run_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    with os.fdopen(os.dup(fd), "r", encoding="utf-8", errors="replace") as f:
        holder = f.read().strip()
    fields = dict(kv.split("=", 1) for kv in holder.split() if "=" in kv)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        same_host_live = (fields.get("host") == socket.gethostname() and fields.get("pid", "").isdigit()
                          and int(fields["pid"]) != os.getpid()
                          and _process_identity(int(fields["pid"])) == fields.get("id"))
        if same_host_live:
            raise BlockingIOError
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(f"{run_dir} is in use by another run ({holder or 'holder unknown'}); wait for it to end, "
                          f"or use another --logging.run_dir") from None
    me = (f"host={socket.gethostname()} pid={os.getpid()} id={_process_identity(os.getpid())} "
          f"since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    os.ftruncate(fd, 0)
    os.pwrite(fd, me.encode(), 0)
    _LOCKS[key] = fd


def unlock_run_dir(run_dir: str) -> None:
    """Release the lock of lock_run_dir (the end of a run in this process)."""
    fd = _LOCKS.pop(os.path.realpath(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock


# Files a run writes into its run directory by name (checkpoints are written to a temporary name and renamed).
WRITTEN_FILES = (LOCK_FILE, "config.toml", "metrics.jsonl", "metrics.jsonl.old", "final.json")


def check_no_symlinks(run_dir: str) -> None:
    """A file the run writes must not be a symlink: writing through it would overwrite whatever it points to."""
    for name in WRITTEN_FILES:
        path = os.path.join(run_dir, name)
        if os.path.islink(path):
            raise RunDirError(f"{path} is a symlink (to {os.readlink(path)}); a run writes that file, so it would "
                              f"overwrite the target: remove the link, or use another --logging.run_dir")


def prepare_run_dir(cfg, bad_checkpoints, log, code: dict | None = None, branched_from: str | None = None) -> None:
    """Rank 0, once every check has passed: the first writes into the run directory, the lock first. A new cooldown
    branch starts with the history of the run it branches from (its metrics.jsonl, cut back to the branch point by
    MetricsLogger), so its curves and counters continue from there."""
    run_dir = cfg.logging.run_dir
    if os.path.islink(run_dir.rstrip(os.sep)):  # allowed (a run dir on a scratch disk), but said where it writes
        log(f"note: {run_dir} is a symlink; the run writes into {os.path.realpath(run_dir)}")
    if os.path.isdir(run_dir):
        check_no_symlinks(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    lock_run_dir(run_dir)
    for path, problem in bad_checkpoints:
        ckpt.set_aside(path, problem, log, suffix=".abandoned" if problem.startswith("abandoned") else ".corrupt")
    ckpt.clean_incomplete(run_dir)  # leftovers of a write that a crash interrupted
    source_metrics = os.path.join(os.path.dirname(branched_from or ""), "metrics.jsonl")
    ours = os.path.join(run_dir, "metrics.jsonl")
    if branched_from and not os.path.exists(ours) and os.path.isfile(source_metrics):
        atomic_write(ours, lambda f: f.write(open(source_metrics, "rb").read()))
    header = "".join(f"# code {k}: {v}\n" for k, v in (code or {}).items())  # comments: config.toml still loads
    atomic_write(os.path.join(run_dir, "config.toml"), lambda f: f.write((header + to_toml(cfg)).encode()))


def save_checkpoint(run: TrainingState, step: int, model, optimizer, cfg, mcfg, master: bool, device_type: str,
                    log) -> None:
    """Checkpoint after `step` steps (rank 0 writes; every rank checks the weights, so every rank stops together
    if they are non-finite: such a checkpoint must never become "the last good checkpoint")."""
    if not parallel.all_finite([p for p in model.parameters() if p.requires_grad]):  # shards: checked per rank
        raise NonFiniteError(f"the weights became non-finite by step {step}, so no checkpoint was written "
                             f"({run.last_good_text()}); {run.resume_hint()}")
    path, good, previous_good = ckpt.checkpoint_path(cfg.logging.run_dir, step), run.healthy, run.last_good
    if good:
        run.last_good = path
    # FSDP: every rank takes part in gathering the full state dicts (DDP's format), which rank 0 then writes
    model_sd, optimizer_sd = (parallel.full_state_dicts(model, optimizer) if parallel.is_sharded(model)
                              else (None, None))
    if not master:
        return
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if device_type == "cuda" else None}
    path = ckpt.save_checkpoint(cfg.logging.run_dir, {
        "model": model.state_dict() if model_sd is None else model_sd,
        "optimizer": optimizer.state_dict() if optimizer_sd is None else optimizer_sd, "step": step,
        "best_val_loss": run.best_val, "counters": run.counters.state_dict(), "elapsed_s": run.elapsed_s,
        "skipped_steps": run.skipped, "wall_s": run.wall_s, "rng": rng, "config": to_dict(cfg),
        "model_config": vars(mcfg).copy(), "good": good, "last_good": run.last_good,
        "steps_since_skip": run.steps_since_skip, "resumed_from": run.resumed_from,
        "target_reached": run.target_reached, "code": run.code, "cooldown_start": run.cooldown_start,
        "branched_from": run.branched_from,
    }, cfg.checkpoint.keep_last, protect=run.last_good)
    log(f"saved {path}" + ("" if good else f" (while recovering from skipped steps: not a good checkpoint; the good "
                                           f"one, {previous_good or 'none yet'}, is kept)"))


def finished_summary(run: TrainingState, cfg, ddp: bool, master: bool) -> dict | None:
    """final.json of a run that already reached train.max_steps (a rerun then changes nothing), else None."""
    path = os.path.join(cfg.logging.run_dir, "final.json")
    at_target = bool(cfg.train.stop_at_target and run.target_reached and run.target_reached["step"] == run.start_step)
    if run.start_step < cfg.train.max_steps and not at_target:
        return None
    return from_master(ddp, master, lambda: json.load(open(path)) if os.path.isfile(path) else None)
