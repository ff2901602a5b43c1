"""What a train.py process needs around the training loop: torch.distributed setup and the end of a worker process
(run_process), the SIGINT/SIGTERM handler, the fatal-error file that keeps torchrun from restarting a deterministic
failure (run.sh sets it), and the translation of an unwritable run directory into one line.
"""

import atexit
import errno
import logging
import os
import shlex
import signal
import sys

import torch
import torch.distributed as dist

from atomic import atomic_write
from errors import ERRORS, ConfigError, Interrupted, NanoptimError, RunDirError

# Set by run.sh under torchrun: where a worker records a user error, so that torchrun's restart (meant for crashes)
# fails at once instead of re-running a deterministic failure --max-restarts times.
FATAL_FILE_ENV = "NANOPTIM_FATAL_FILE"


# The arguments train.py was started with (train.main sets them), for error messages that give the exact command.
ARGV: list[str] | None = None


def command_with(*extra: str) -> str:
    """The command the user typed (run.sh sets NANOPTIM_COMMAND="bash run.sh"; otherwise `python train.py`), with
    `extra` arguments appended, replacing an earlier value of the same --key."""
    keys = {e.split("=", 1)[0] for e in extra}
    args = [a for a in (sys.argv[1:] if ARGV is None else ARGV) if a.split("=", 1)[0] not in keys]
    return " ".join([os.environ.get("NANOPTIM_COMMAND", "python train.py"), *map(shlex.quote, [*args, *extra])])


def stop_with_parent() -> None:
    """A torchrun worker gets SIGTERM when its agent dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG), so it
    checkpoints and stops (StopRequest) instead of training on in the background with nobody to report to."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the agent died before the prctl: stop now
        os.kill(os.getpid(), signal.SIGTERM)


def setup_distributed(device_choice: str):
    """(ddp, rank, local_rank, world_size, device). torchrun sets RANK/LOCAL_RANK/WORLD_SIZE."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    use_cuda = torch.cuda.is_available() if device_choice == "auto" else device_choice == "cuda"
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA GPU is visible; use --train.device=cpu or auto")
    if not ddp:
        return False, 0, 0, 1, torch.device("cuda" if use_cuda else "cpu")
    stop_with_parent()
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    # torchrun's restarts (--max-restarts) reuse its TCP store, and the process group's keys (each rank's address)
    # are not namespaced per attempt: a restarted rank could read a dead rank's address from the previous attempt
    # and fail to connect, or hang. So the store is namespaced by the attempt number here.
    store, _, _ = next(dist.rendezvous("env://", rank, world_size))
    store = dist.PrefixStore(f"nanoptim/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world_size,
                            device_id=device if use_cuda else None)
    global _WORLD_GROUP
    _WORLD_GROUP = dist.group.WORLD  # kept until the process ends: see run_process
    return True, rank, local_rank, world_size, device


_WORLD_GROUP = None  # the process group of setup_distributed, never freed before os._exit (run_process)


def run_process(main) -> None:
    """Run a script's `main` (main_guard(main)); a process that started a process group then ends here, with the
    exit code Python would give it, through os._exit after the exit handlers and a flush of stdout/stderr (what
    multiprocessing's children do), skipping the interpreter's finalization.

    Why: gloo's run-loop thread releases each finished collective's tensors a moment after the caller's wait()
    returned, and freeing a tensor that Python held takes the GIL. If the process group is freed before that, with
    the GIL held (DDP's Reducer frees it so, when the model goes with the last reference to the group), its
    destructor joins that thread, which waits for the GIL: the process hangs forever (seen in CI: a worker asleep
    on a futex after its stop line). If the moment comes during finalization, the thread is killed inside a C++
    destructor ("terminate called without an active exception", SIGABRT). So setup_distributed keeps a reference
    to the group (no Reducer ever frees it) and the process never finalizes. pytorch/pytorch#56297."""
    try:
        main()
        code = 0
    except BaseException as e:
        if _WORLD_GROUP is None:
            raise
        code = _exit_code(e)
    if _WORLD_GROUP is None:
        return
    atexit._run_exitfuncs()  # wandb's finish, logging's flush, torch.compile's worker pool: what an exit runs first
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _exit_code(e: BaseException) -> int:
    """The exit code Python gives a process that `e` ends, after printing what Python would print."""
    if isinstance(e, SystemExit):
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    sys.excepthook(type(e), e, e.__traceback__)
    return 128 + signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1


# Each one stops the run at the end of the current step with a checkpoint, exit code 128 + signal, never restarted:
# Ctrl-C, SIGTERM (kill, Kubernetes, SLURM at the time limit) and SIGUSR1 (SLURM's early warning: `#SBATCH
# --signal=USR1@120` sends it 120 s before the time limit, the grace for one step and the checkpoint).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """A signal handler for STOP_SIGNALS (Ctrl-C, schedulers' preemption notices): the first one lets the current
    step finish, then the run checkpoints, prints one line and exits 128 + signal; a second one exits at once."""

    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum

    def agreed(self, ddp: bool, device) -> int | None:
        """The signal to stop for, the same on every rank (one ran out of time = all stop at this step)."""
        if not ddp:
            return self.signum
        flag = torch.tensor([float(self.signum or 0)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None


def check_earlier_fatal_error() -> None:
    """Under run.sh's torchrun, a restarted worker group whose previous attempt stopped on a user error (bad input,
    non-finite loss, disk full) fails at once: restarting cannot fix it, only re-run it --max-restarts times."""
    path = os.environ.get(FATAL_FILE_ENV)
    if path and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            kind, _, message = f.read().strip().partition(" ")
        message = f"{message} (an earlier attempt stopped on this; not retried)"
        if kind == Interrupted.__name__:
            signum = next((sig for sig in STOP_SIGNALS if message.startswith(sig.name)), signal.SIGINT)
            raise Interrupted(message, signum)
        raise ERRORS.get(kind, NanoptimError)(message)


def record_fatal_error(e: NanoptimError) -> None:
    """Under run.sh: write the error to the fatal file (run.sh prints it, once) and, for an error a restart cannot
    fix, ask the torchrun agent to stop now rather than restart the group --max-restarts times."""
    path = os.environ.get(FATAL_FILE_ENV)
    if not path:
        return
    try:  # every rank may get here: a private tmp name per process, then an atomic rename
        atomic_write(path, lambda f: f.write(f"{type(e).__name__} {e}\n".encode()),
                                tmp=f"{path}.{os.getpid()}.tmp")
    except OSError:
        return  # best effort: without it torchrun merely retries
    if "TORCHELASTIC_RUN_ID" in os.environ and not isinstance(e, Interrupted) and os.getppid() > 1:
        os.kill(os.getppid(), signal.SIGTERM)  # our parent is the agent (launch.py torchrun, below)


def torchrun(argv: list[str]) -> int:
    """torchrun as run.sh runs it (`python launch.py <torchrun arguments>`): the agent's own log lines at ERROR level
    only, and a failure as its exit code instead of a ChildFailedError traceback; run.sh turns a recorded fatal
    error into one line. Crashed workers are still restarted (--max-restarts), and their output is untouched."""
    os.environ.setdefault("LOGLEVEL", "ERROR")  # read by torch.distributed.elastic's loggers when imported
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):  # some were created before LOGLEVEL was set
        if name.startswith("torch.distributed") and os.environ["LOGLEVEL"] == "ERROR":
            logging.getLogger(name).setLevel(logging.ERROR)

    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        rank, failure = min(e.failures.items())
        if not os.path.isfile(os.environ.get(FATAL_FILE_ENV) or ""):
            print(f"error: worker rank {rank} failed with exit code {failure.exitcode} after the restarts "
                  f"(its output is above)", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(torchrun(sys.argv[1:]))


def run_dir_error(e: OSError, run_dir: str) -> RunDirError | None:
    """A one-line RunDirError for an OSError that means "the run directory cannot be written", else None."""
    disk = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
    where = os.path.abspath(e.filename) if isinstance(e.filename, str) else None
    inside = where is not None and where.startswith(os.path.abspath(run_dir) + os.sep)
    if not (disk or (inside and e.errno in (errno.EACCES, errno.EPERM))):
        return None
    return RunDirError(f"could not write {where or 'to ' + run_dir} ({e.strerror or e}); every checkpoint written "
                       f"so far is intact; free disk space or fix permissions of {run_dir}, then rerun the same "
                       f"command to resume")
