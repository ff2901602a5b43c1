"""sweep.py with a fake launcher (no train.py, no run.sh): cell names, commands, restart, summary, heatmap."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

import sweep
from errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stands in for `bash run.sh`: logs its argv, then writes metrics.jsonl + final.json into
# --logging.run_dir with a val loss that is lowest at lr=3e-3, lion_lr=1e-4. Fails (exit 3, partial
# metrics, no final.json) for the cells named in $FAKE_FAIL (comma-separated).
FAKE_LAUNCHER = textwrap.dedent('''
    import json, math, os, sys
    base, args = sys.argv[1], dict(a[2:].split("=", 1) for a in sys.argv[2:])
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    assert os.path.isabs(base) and os.path.isfile(base), base
    run_dir, name = args["logging.run_dir"], args["logging.run_name"]
    os.makedirs(run_dir, exist_ok=True)
    lr, lion_lr = float(args.get("optimizer.lr", 3e-3)), float(args.get("optimizer.lion_lr", 1e-4))
    best = 3.0 + (math.log10(lr / 3e-3)) ** 2 + 0.5 * (math.log10(lion_lr / 1e-4)) ** 2
    recs = [{"kind": "config", "config": {"optimizer": {"name": "lionmuon"}, "logging": {"run_name": name}}}]
    for step, vl in ((0, 10.0), (10, best + 1), (20, best)):
        c = dict(step=step, tokens=100 * step, model_flops=1e9 * step, optimizer_flops=1e7 * step,
                 total_flops=1.01e9 * step, elapsed_s=0.1 * step)
        recs.append(dict(kind="eval", val_loss=vl, **c))
    fail = name in os.environ.get("FAKE_FAIL", "").split(",")
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\\n" for r in (recs[:2] if fail else recs))
    if fail:
        sys.exit(3)
    final = dict(steps=20, best_val_loss=best, final_val_loss=best, tokens=2000, model_flops=2e10,
                 optimizer_flops=2e8, total_flops=2.02e10, elapsed_s=2.0)
    with open(os.path.join(run_dir, "final.json"), "w") as f:
        json.dump(final, f)
''')


def fake_loss(lr, lion_lr=1e-4):
    """The best val loss FAKE_LAUNCHER reports for a cell."""
    return 3.0 + math.log10(lr / 3e-3) ** 2 + 0.5 * math.log10(lion_lr / 1e-4) ** 2


@pytest.fixture
def env(tmp_path, monkeypatch):
    launcher = tmp_path / "fake_launcher.py"
    launcher.write_text(FAKE_LAUNCHER)
    base = tmp_path / "base.toml"
    base.write_text("[optimizer]\nname = \"lionmuon\"\n")
    log = tmp_path / "invocations.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_FAIL", raising=False)

    def invocations():
        if not log.exists():
            return []
        return [json.loads(l) for l in log.read_text().splitlines()]

    def run(*grid, extra=(), dry=False):
        argv = [str(base), "--out", str(tmp_path / "sw"), "--launcher", f"{sys.executable} {launcher}"]
        argv += [a for g in grid for a in ("--grid", g)] + (["--dry-run"] if dry else [])
        argv += ["--", *extra] if extra else []
        return sweep.main(argv)

    return dict(run=run, invocations=invocations, out=tmp_path / "sw", monkeypatch=monkeypatch)


def is_png(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path).ndim == 3


def summary_rows(path):
    with open(path) as f:
        text = f.read()
    lines = [l for l in text.splitlines()
             if l.startswith("| ") and not l.startswith(("| cell", "| ---"))]
    return {r[0]: r for r in ([c.strip() for c in l.strip("|").split("|")] for l in lines)}


def test_cell_names():
    cells = sweep.cell_names(sweep.parse_grid(["optimizer.lr=1e-3,3e-3", "optimizer.lion_lr=5e-5"]))
    assert cells == [("lr1e-3_lion_lr5e-5", [("optimizer.lr", "1e-3"), ("optimizer.lion_lr", "5e-5")]),
                     ("lr3e-3_lion_lr5e-5", [("optimizer.lr", "3e-3"), ("optimizer.lion_lr", "5e-5")])]
    names = [n for n, _ in sweep.cell_names(sweep.parse_grid(["optimizer.name=adamw,lion", "train.seed=0,1"]))]
    assert names == ["name-adamw_seed0", "name-adamw_seed1", "name-lion_seed0", "name-lion_seed1"]
    # Same short key in two sections -> full keys; values that slug to the same name -> hashed, still unique.
    names = [n for n, _ in sweep.cell_names(sweep.parse_grid(["optimizer.dir=1e-3", "data.dir=a/b,a-b"]))]
    assert len(set(names)) == 2 and all(n.startswith("optimizer_dir1e-3_data_dir-a-b-") for n in names)
    assert all("/" not in n and len(n) <= sweep.MAX_NAME for n in names)
    long = [n for n, _ in sweep.cell_names(sweep.parse_grid(["data.dir=" + "x" * 300]))]
    assert len(long[0]) <= sweep.MAX_NAME


@pytest.mark.parametrize("grid, match", [
    ("optimizer.lr", "no '=' and so no values. Write --grid optimizer.lr=V1,V2"), ("lr=1e-3", "not a config key"),
    ("optim.lr=1", "not a config key"), ("logging.run_dir=a,b", "set by the sweep"),
    ("optimizer.lr=1e-3,,3e-3", "empty value"), ("optimizer.lr=1,1", "repeats"),
    ("train.max_step=10,20", "unknown key train.max_step; did you mean train.max_steps?"),
])
def test_bad_grid(grid, match):
    with pytest.raises(ConfigError, match=match):
        sweep.parse_grid([grid])


def test_bad_extra_and_base(env, tmp_path):
    with pytest.raises(ConfigError, match="conflicts"):
        env["run"]("optimizer.lr=1e-3", extra=["--optimizer.lr=2e-3"])
    with pytest.raises(ConfigError, match="malformed"):
        env["run"]("optimizer.lr=1e-3", extra=["train.max_steps=3"])
    with pytest.raises(ConfigError, match="given twice"):
        env["run"]("optimizer.lr=1e-3", "optimizer.lr=2e-3")
    with pytest.raises(ConfigError, match="not found"):
        sweep.main([str(tmp_path / "nope.toml"), "--grid", "optimizer.lr=1"])
    assert env["invocations"]() == []
    p = subprocess.run([sys.executable, "sweep.py", str(tmp_path / "nope.toml"), "--grid", "optimizer.lr=1"],
                       cwd=REPO, capture_output=True, text=True, check=False)
    assert p.returncode == 2 and p.stderr.startswith("error:") and p.stderr.count("\n") == 1


def test_resume_half_finished_grid(env, capsys):
    grid = ("optimizer.lr=1e-3,3e-3,1e-2", "optimizer.lion_lr=1e-4,3e-4")
    env["monkeypatch"].setenv("FAKE_FAIL", "lr1e-2_lion_lr1e-4")
    assert env["run"](*grid, extra=["--train.max_steps=20"]) == 1  # one cell failed -> non-zero exit
    first = env["invocations"]()
    assert len(first) == 6
    # The command: base, extra overrides, cell overrides, then run_dir/run_name/group.
    cmd = first[0]
    assert cmd[1:4] == ["--train.max_steps=20", "--optimizer.lr=1e-3", "--optimizer.lion_lr=1e-4"]
    assert cmd[4:] == [f"--logging.run_dir={env['out'] / 'lr1e-3_lion_lr1e-4'}",
                       "--logging.run_name=lr1e-3_lion_lr1e-4", "--logging.group=sw"]
    rows = summary_rows(env["out"] / "summary.md")
    assert rows["lr1e-2_lion_lr1e-4"][3] == "failed (exit 3)"
    assert rows["lr1e-2_lion_lr1e-4"][4:] == ["—"] * 4  # its partial metrics are not a result
    assert rows["lr3e-3_lion_lr1e-4"][3] == "done" and rows["lr3e-3_lion_lr1e-4"][4] == "**3.0000**"
    assert is_png(env["out"] / "heatmap.png")

    # Restart after fixing the cause: only the unfinished cell runs again.
    env["monkeypatch"].delenv("FAKE_FAIL")
    (env["out"] / "heatmap.png").unlink()
    assert env["run"](*grid, extra=["--train.max_steps=20"]) == 0
    rerun = env["invocations"]()[len(first):]
    assert [c[2:4] for c in rerun] == [["--optimizer.lr=1e-2", "--optimizer.lion_lr=1e-4"]]
    rows = summary_rows(env["out"] / "summary.md")
    assert len(rows) == 6
    assert rows["lr1e-2_lion_lr1e-4"][3] == "done" and rows["lr1e-2_lion_lr1e-4"][4] == f"{fake_loss(1e-2):.4f}"
    assert sum(r[3] == "finished earlier" for r in rows.values()) == 5
    assert "Best: **lr3e-3_lion_lr1e-4**" in (env["out"] / "summary.md").read_text()
    assert is_png(env["out"] / "heatmap.png")

    # A third run finds everything finished and launches nothing.
    capsys.readouterr()
    assert env["run"](*grid, extra=["--train.max_steps=20"]) == 0
    assert len(env["invocations"]()) == 7


def test_one_axis_line_plot_and_dry_run(env, capsys):
    assert env["run"]("optimizer.lr=1e-3,3e-3,1e-2", dry=True) == 0
    out = capsys.readouterr().out
    assert env["invocations"]() == [] and not env["out"].exists()
    assert out.count("--logging.run_name=") == 3 and "--optimizer.lr=1e-2" in out

    assert env["run"]("optimizer.lr=1e-3,3e-3,1e-2") == 0
    assert is_png(env["out"] / "heatmap.png")
    rows = summary_rows(env["out"] / "summary.md")
    assert [r[2] for r in rows.values()] == ["done"] * 3  # columns: cell, lr, status, best val loss, ...
    assert rows["lr3e-3"][3] == "**3.0000**" and rows["lr1e-2"][3] == f"{fake_loss(1e-2):.4f}"

    assert env["run"]("optimizer.lr=1e-3,3e-3,1e-2", dry=True) == 0
    assert capsys.readouterr().out.count("# finished, would skip") == 3


def test_three_axes_heatmap_takes_min(env):
    grid = sweep.parse_grid(["optimizer.lr=3e-3,1e-2", "optimizer.lion_lr=1e-4,1e-3", "train.seed=0,1"])
    assert env["run"](*(f"{k}={','.join(v)}" for k, v in grid)) == 0
    assert len(env["invocations"]()) == 8 and is_png(env["out"] / "heatmap.png")
    # Make seed=1 better than seed=0 in one cell and unfinished in another: the heatmap shows the
    # minimum over seeds, and ignores a cell that did not finish.
    results = [sweep._cell_result(str(env["out"] / n), n, o, "done") for n, o in sweep.cell_names(grid)]
    by_name = {c["name"]: c for c in results}
    by_name["lr1e-2_lion_lr1e-3_seed1"]["run"].final["best_val_loss"] = 2.5
    by_name["lr3e-3_lion_lr1e-4_seed0"]["finished"] = False
    m = sweep.heatmap_matrix(results, grid)
    assert m.shape == (2, 2)
    assert m[1, 1] == 2.5 and m[1, 0] == pytest.approx(fake_loss(1e-2, 1e-4))
    assert m[0, 0] == pytest.approx(3.0)  # seed1 still finished
    by_name["lr3e-3_lion_lr1e-4_seed1"]["finished"] = False
    assert math.isnan(sweep.heatmap_matrix(results, grid)[0, 0])


def sweep_cli(*args):
    return subprocess.run([sys.executable, "sweep.py", *args], cwd=REPO, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("args, match", [
    (["--grid", "optimizer.lr"], "--grid optimizer.lr=V1,V2"),
    (["--grid", "train.max_stepz=1,2"], "did you mean train.max_steps?"),
    (["--grid"], "expected one argument"),
    (["--grid", "optimizer.lr=1e-3", "--train.max_steps=5"], "go after a lone `--`"),
])
def test_bad_grid_is_one_error_line(args, match):
    p = sweep_cli("configs/repro_cpu.toml", *args)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("error:") and p.stderr.count("\n") == 1 and match in p.stderr, p.stderr


def test_dry_run_validates_every_cell(env, capsys):
    # One good and one bad value: the good cell's command is printed, the bad one is a line naming cell and problem.
    with pytest.raises(ConfigError, match="1 of 2 cells have an invalid config"):
        env["run"]("optimizer.lr=1e-3,abc", dry=True)
    out, err = capsys.readouterr()
    assert out.count("--logging.run_name=") == 1 and "--optimizer.lr=1e-3 " in out
    assert err.splitlines() == ["error: cell lr-abc: optimizer.lr = 'abc' has the wrong type: expected float"]
    # The extra overrides count too: with them, every cell is bad.
    with pytest.raises(ConfigError, match="2 of 2 cells"):
        env["run"]("optimizer.lr=1e-3,3e-3", extra=["--train.max_steps=0"], dry=True)
    assert capsys.readouterr().err.count("train.max_steps = 0 must be > 0") == 2
    assert env["invocations"]() == [] and not env["out"].exists()


def test_a_grid_key_the_optimizer_rejects_fails_before_any_cell(env, tmp_path, capsys):
    # lion_lr is not an AdamW argument: without --dry-run too, nothing starts.
    grid = ("optimizer.lr=1e-3,3e-3", "optimizer.lion_lr=1e-4,3e-4")
    with pytest.raises(ConfigError, match="4 of 4 cells have an invalid config .* no cell was started"):
        env["run"](*grid, extra=["--optimizer.name=adamw"])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(l.startswith("error: cell lr") and "not used by optimizer 'adamw'" in l for l in err)
    assert env["invocations"]() == [] and not env["out"].exists()
    # The README's example, against the real config: every cell is valid (commands only, nothing runs).
    p = sweep_cli("configs/repro_cpu.toml", "--out", str(tmp_path / "readme"), "--dry-run",
                  "--grid", "optimizer.lr=3e-3,1e-2", "--grid", "optimizer.lion_lr=1e-4,3e-4",
                  "--", "--optimizer.name=lionmuon_p2", "--train.max_steps=50")
    assert p.returncode == 0 and p.stderr == "" and p.stdout.count("run.sh") == 4, p.stderr
    p = sweep_cli("configs/repro_cpu.toml", "--out", str(tmp_path / "readme"), "--dry-run",
                  "--grid", "optimizer.lion_lr=1e-4,3e-4", "--", "--optimizer.name=adamw")
    assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 3, p.stderr
    assert p.stderr.startswith("error: cell lion_lr1e-4: unknown key optimizer.lion_lr")


def figure_texts(monkeypatch):
    """Collect the texts of every axes of each figure sweep.py saves."""
    import matplotlib.figure

    texts, save = [], matplotlib.figure.Figure.savefig

    def savefig(fig, *a, **k):
        texts.append([t.get_text() for ax in fig.axes for t in ax.texts])
        return save(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return texts


def test_failed_cells_have_no_value_and_all_failed_draws_nothing(env, capsys):
    texts = figure_texts(env["monkeypatch"])
    grid = ("optimizer.lr=1e-3,3e-3", "optimizer.lion_lr=1e-4,3e-4")
    env["monkeypatch"].setenv("FAKE_FAIL", "lr3e-3_lion_lr1e-4")
    assert env["run"](*grid) == 1
    assert is_png(env["out"] / "heatmap.png")
    (labels,) = texts
    assert labels.count("failed") == 1 and sum(t.endswith("★") for t in labels) == 1  # 3 values, one failed square
    assert summary_rows(env["out"] / "summary.md")["lr3e-3_lion_lr1e-4"][4] == "—"



@pytest.mark.parametrize("grid", [("optimizer.lr=1e-3,3e-3",), ("optimizer.lr=1e-3,3e-3", "optimizer.lion_lr=1e-4")])
def test_all_cells_failed_draws_no_figure(env, capsys, grid):
    texts = figure_texts(env["monkeypatch"])
    env["monkeypatch"].setenv("FAKE_FAIL", ",".join(n for n, _ in sweep.cell_names(sweep.parse_grid(grid))))
    assert env["run"](*grid) == 1
    err = capsys.readouterr().err
    assert texts == [] and not (env["out"] / "heatmap.png").exists()
    assert err.count("no cell finished, so no heatmap.png was drawn") == 1
    rows = summary_rows(env["out"] / "summary.md")
    assert len(rows) == 2 and all(r[len(grid) + 1] == "failed (exit 3)" and r[len(grid) + 2] == "—"
                                  for r in rows.values())


def test_ctrl_c_is_one_line_and_keeps_the_summary(env, tmp_path):
    # The second cell's launcher sends SIGINT to the sweep (as Ctrl-C does): summary so far, one `stopped:` line, 130.
    launcher = tmp_path / "interrupting.py"
    launcher.write_text("import os, signal, subprocess, sys\n"
                        "if 'lr3e-3' in ' '.join(sys.argv):\n"
                        "    os.kill(os.getppid(), signal.SIGINT)\n"
                        "    signal.pause()\n"
                        f"sys.exit(subprocess.run([sys.executable, {str(tmp_path / 'fake_launcher.py')!r}, "
                        "*sys.argv[1:]]).returncode)\n")
    p = sweep_cli(str(tmp_path / "base.toml"), "--out", str(env["out"]), "--launcher",
                  f"{sys.executable} {launcher}", "--grid", "optimizer.lr=1e-3,3e-3,1e-2")
    assert p.returncode == 130, p.stderr
    assert p.stderr.splitlines()[-1].startswith("stopped: Ctrl-C during cell 2/3 (lr3e-3)")
    assert "Traceback" not in p.stderr
    rows = summary_rows(env["out"] / "summary.md")
    assert [r[2] for r in rows.values()] == ["done", "interrupted", "not run"]
