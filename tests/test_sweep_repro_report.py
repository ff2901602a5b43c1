"""`bash benchmarks/repro_cpu.sh report` never replaces the committed docs/results/ with less (run in a copy)."""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_TOP = {".git", "runs", "out", "wandb", ".pytest_cache"}  # run outputs and caches are not part of a clone


def snapshot(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def checkout(tmp_path):
    """A copy of the working tree without any run directory (as a fresh clone has)."""
    dst = tmp_path / "repo"

    def ignore(d, names):
        d = os.path.abspath(d)
        return [n for n in names if n == "__pycache__" or (d == REPO and n in SKIP_TOP)
                or (d == os.path.join(REPO, "data") and os.path.isdir(os.path.join(d, n)))]  # prepared corpora

    shutil.copytree(REPO, dst, ignore=ignore)
    assert not (dst / "runs").exists() and (dst / "docs" / "results" / "summary.md").is_file()
    return dst


def report(repo, **env):
    return subprocess.run(["bash", "benchmarks/repro_cpu.sh", "report"], cwd=repo, capture_output=True, text=True,
                          check=False, env=dict(os.environ, PYTHON=sys.executable, **env))


def test_report_without_runs_writes_nothing(checkout):
    before = snapshot(checkout / "docs" / "results")
    p = report(checkout)
    assert p.returncode != 0
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: no runs under runs/repro"), p.stderr
    assert "repro_cpu.sh sweep" in p.stderr and "repro_cpu.sh final" in p.stderr
    assert snapshot(checkout / "docs" / "results") == before


def test_report_with_some_runs_keeps_the_rest(checkout):
    # One final run of the 39 and no sweep: the sweep files stay as committed, and the other 38 final runs come from
    # their committed copies, so summary.md still ranks all 13 methods (the same numbers, so the same files).
    res = checkout / "docs" / "results"
    before = snapshot(res)
    shutil.copytree(res / "runs" / "adamw_s1", checkout / "runs" / "repro" / "final" / "adamw_s1")
    p = report(checkout)
    assert p.returncode == 0, p.stderr
    assert "lr_sweep.md and lr_sweep.png are left as committed" in p.stderr
    assert "38 final run(s)" in p.stderr
    after = snapshot(res)
    assert after.keys() == before.keys()
    for name in ("lr_sweep.md", "lr_sweep.png", "summary.md", "runs.md", "results.json"):
        assert after[name] == before[name], name
