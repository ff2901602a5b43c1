"""Every fenced command of README.md, run as written, in order, in a fresh copy of the checkout.

A new user types the README's commands one after the other; this test does the same. Each command must match one
rule below, so a command added to the README without a rule fails the test (it has to be thought about):
  - "run": run it as written and expect exit code 0 (plus a check of what it should have produced);
  - "gpu": needs GPUs and a prepared 10B-token dataset: run it as written on this CPU machine, where it must stop at
    once with one `error:` line naming the `python -m data.prepare` command that makes the data;
  - "offline": needs the Hugging Face hub: run it as written with the hub offline, where it must stop with one
    `error:` line and exit code 2;
  - "checked": the install and test commands themselves (CI runs them): check what they rely on instead;
  - "skip": needs several machines.
"""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from conftest import ROOT, corpus_text


def readme_commands(path=os.path.join(ROOT, "README.md")) -> list[str]:
    """The commands of README.md's ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", open(path, encoding="utf-8").read(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(re.sub(r"(^|\s)#\s.*$", "", line).split())  # the README's comments: "  # ..."
            if command:
                commands.append(command)
    return commands


def _rule(command: str) -> str:
    if command.startswith("pip install") or command.startswith("python -m pytest"):
        return "checked"
    if command.startswith("NNODES="):
        return "skip"
    if re.match(r"bash run\.sh configs/(gpt2_(124m|355m|720m)|track3_124m)\.toml", command):
        return "gpu"
    if command.endswith("--plan") or " --plan " in command or "--plan." in command:
        return "run"  # the planner needs neither data nor a GPU
    if re.match(r"python -m data\.prepare (fineweb|fineweb10b-gpt2|openwebtext|slimpajama|wikitext103)\b", command):
        return "offline"
    return "run"


# What a "run" command must leave behind (paths in the checkout copy), beyond exit code 0.
PRODUCES = {
    "bash run.sh": ["out/tiny_cpu_adamw/final.json", "out/tiny_cpu_adamw/sample.txt"],
    "python train.py configs/tiny_cpu.toml --optimizer.name=muon": ["out/tiny_cpu_muon_max_steps50/final.json"],
    "python -m data.prepare text": ["data/mytext/meta.json"],
    "python plot.py out/": ["figs/loss.png", "figs/loss_pareto.png"],
    "python sweep.py": ["runs/sweep_repro_cpu/summary.md"],
    "python plot.py runs/": ["results.md"],
    "python stats.py": ["stats.md"],
}


def test_every_readme_command_has_a_rule():
    commands = readme_commands()
    assert any(c == "bash run.sh" for c in commands)  # the parser found the blocks
    for prefix in PRODUCES:
        assert any(c.startswith(prefix) for c in commands), f"no README command starts with {prefix!r}"


def _checkout_copy(dest) -> str:
    """The tracked files of this checkout (as they are now), without out/, runs/ or data the user made."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)):
            os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), os.path.join(dest, f))
    return str(dest)


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    copy = _checkout_copy(tmp_path / "checkout")
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python")  # `python` in the README = the interpreter running the tests
    (home / "corpus.txt").write_text(corpus_text()[:200_000], encoding="utf-8")  # the README's ~/corpus.txt
    env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable,
               PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("OMP_NUM_THREADS", None)  # as a user's shell: run.sh picks the threads (the suite may have pinned one)
    seen = []
    for command in readme_commands():
        rule = _rule(command)
        seen.append((rule, command))
        if rule == "skip":
            continue
        if rule == "checked":
            if command.startswith("pip install"):
                for line in open(os.path.join(ROOT, "requirements.txt")):
                    name = re.split(r"[<>=!~ ]", line.strip())[0]
                    if name:
                        importlib.metadata.version(name)  # installed (CI ran this very command first)
            else:
                ci = open(os.path.join(ROOT, ".ci", "run")).read().replace("python3 ", "python ")
                assert command in ci, "CI must run the README's test command"
            continue
        t0 = time.time()
        proc = subprocess.run(command, shell=True, cwd=copy, env=env, capture_output=True, text=True, timeout=900)
        print(f"{time.time() - t0:6.1f}s  {rule:7}  {command}")  # pytest -s shows where the time goes
        out = f"$ {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if rule == "run":
            assert proc.returncode == 0, out
            assert "Traceback" not in proc.stderr, out
            for prefix, paths in PRODUCES.items():
                if command.startswith(prefix):
                    for path in paths:
                        assert os.path.exists(os.path.join(copy, path)), f"{path} missing after\n{out}"
        else:  # "gpu" and "offline": one line, exit code 2, nothing half-done
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out
            if rule == "gpu":
                assert "python -m data.prepare fineweb" in lines[0], out
    assert [r for r, _ in seen].count("run") >= 6, seen
