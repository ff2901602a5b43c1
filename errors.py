"""User-facing errors. Entry points print them as one line (`error: ...`) and exit with code 2.

Raise these for bad input (config, data, checkpoint, prompt) or for a run that cannot go on (non-finite values, an
unwritable run directory); the message names the problem and the fix. Anything else is a bug and keeps its
traceback.
"""


class NanoptimError(Exception):
    """Base class: a problem with the user's input, reported as one line without a traceback."""


class ConfigError(NanoptimError):
    """A config file, key, value or command-line override is wrong."""


class DataError(NanoptimError):
    """A data directory, shard or token file is missing or malformed."""


class CheckpointError(NanoptimError):
    """A checkpoint is missing, corrupt, or does not fit the model/optimizer being built."""


class NonFiniteError(NanoptimError):
    """The loss, a gradient or the weights became inf/NaN and the run cannot (or may not) skip past it."""


class RunDirError(NanoptimError):
    """The run directory cannot be written: disk full, quota, read-only filesystem, permissions."""


class Interrupted(NanoptimError):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's notice): the run stopped at a step boundary with a checkpoint.
    Exit code 128 + the signal number (130, 143), as a shell reports a process the signal ended."""

    prefix = "stopped"

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum


# By class name: an error raised on one rank (or in an earlier torchrun attempt) is re-raised as the same class.
ERRORS = {cls.__name__: cls for cls in (NanoptimError, ConfigError, DataError, CheckpointError, NonFiniteError,
                                        RunDirError, Interrupted)}


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """warnings.formatwarning for the command-line tools: `warning: <message>`, not Python's file:line: UserWarning.
    Warnings from libraries keep their category, so their origin stays findable."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"warning{kind}: {message}\n"


def main_guard(main):
    """Run `main()`; turn a NanoptimError into one line on stderr and exit code 2; warnings print as one line."""
    import sys
    import warnings

    warnings.formatwarning = one_line_warning
    try:
        return main()
    except NanoptimError as e:
        if not _printed_by_launcher():
            print(f"{getattr(e, 'prefix', 'error')}: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))


def _printed_by_launcher() -> bool:
    """A worker of run.sh's torchrun leaves its error to run.sh, which prints the fatal file's line once."""
    import os

    path = os.environ.get("NANOPTIM_FATAL_FILE")
    return bool(path) and os.path.isfile(path) and "TORCHELASTIC_RUN_ID" in os.environ
