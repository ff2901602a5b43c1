"""Run many CLI invocations (`train.py ...`, `sample.py ...`) as separate processes forked from one warm interpreter.

    python tests/reliability_faults/warm_cli.py JOBS.json RESULTS.json

JOBS.json is a list of {"argv": ["train.py", ...], "stdout": path, "stderr": path}. Each job is a child process
forked after torch and the repo modules are imported (saving ~2-3 s of start-up per job on a loaded CPU); the child
runs the script exactly as `python script args` would (runpy, __name__ == "__main__", sys.argv), with its stdout
and stderr file descriptors redirected, and exits with the script's exit status; an uncaught exception prints its
traceback to stderr and exits 1, as the interpreter does. RESULTS.json gets the exit status of every job.
Used by tests/test_reliability.py for the bad-input table; a few rows also run cold (`python train.py`) as a control.
"""

import json
import os
import runpy
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_child(job) -> None:
    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    code = 0
    try:
        sys.argv = list(job["argv"])
        runpy.run_path(os.path.join(ROOT, job["argv"][0]), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main():
    jobs_path, results_path = sys.argv[1:3]
    os.chdir(ROOT)
    sys.path[0] = ROOT  # as for `python train.py` run from the repo root
    import torch  # noqa: F401 - the point: import once, fork many

    import sample  # noqa: F401
    import train  # noqa: F401

    jobs = json.load(open(jobs_path))
    results = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:
            run_child(job)
        _, status = os.waitpid(pid, 0)
        results.append(os.waitstatus_to_exitcode(status))
    json.dump(results, open(results_path, "w"))


if __name__ == "__main__":
    main()
