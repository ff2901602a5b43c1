"""User-facing errors. Entry points print them as one line (`error: ...`) and exit with code 2.

Raise these for bad input (config, data, checkpoint, prompt); the message names the problem and the fix.
Anything else is a bug and keeps its traceback.
"""


class NanoptimError(Exception):
    """Base class: a problem with the user's input, reported as one line without a traceback."""


class ConfigError(NanoptimError):
    """A config file, key, value or command-line override is wrong."""


class DataError(NanoptimError):
    """A data directory, shard or token file is missing or malformed."""


class CheckpointError(NanoptimError):
    """A checkpoint is missing, corrupt, or does not fit the model/optimizer being built."""


def main_guard(main):
    """Run `main()`; turn a NanoptimError into one line on stderr and exit code 2."""
    import sys

    try:
        return main()
    except NanoptimError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
