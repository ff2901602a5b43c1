"""A fork server for CLI invocations (`train.py ...`, `sample.py ...`): each one a separate process, without paying
Python's and torch's start-up every time (~2-3 s of CPU per launch, most of a tiny run's cost).

    python tests/reliability_faults/warm_cli.py    # then one JSON job per line on stdin, one result line on stdout

A job is {"argv": ["train.py", ...], "stdout": path, "stderr": path, "env": {...}, "faults": [...]}. The server
imports torch and the repo modules once, then forks a child per job. The child applies "env", installs "faults"
(sitecustomize.install, exactly what a cold `python train.py` gets from NANOPTIM_TEST_FAULTS), redirects its
stdout/stderr file descriptors, and runs the script as `python script args` would (runpy, __name__ ==
"__main__", sys.argv); it exits with the script's exit status, and an uncaught exception prints its traceback and
exits 1, as the interpreter does. A SIGKILL (a fault, or the test) ends the child only. The result line is
{"code": exit status, negative for a signal}.
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
        os.environ.update(job.get("env") or {})
        sys.argv = list(job["argv"])
        if job.get("faults"):
            import sitecustomize  # this directory's, imported at start-up because it is on PYTHONPATH

            sitecustomize.install(job["faults"])
        runpy.run_path(os.path.join(ROOT, job["argv"][0]), run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main():
    os.chdir(ROOT)
    sys.path[0] = ROOT  # as for `python train.py` run from the repo root
    import torch  # noqa: F401 - the point: import once, fork many

    import sample  # noqa: F401
    import train  # noqa: F401

    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_child(job)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
