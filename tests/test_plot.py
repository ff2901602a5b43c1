"""plot.py on a fixture of two tiny runs generated here: PNGs, ranking table, crash/resume tolerance."""

import json
import math
import os
import subprocess
import sys

import pytest

import plot
from errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(run_dir, name, optimizer, val_losses, flops_per_step, opt_share, finished=True, sec_per_step=1.0,
             crash_artifacts=False):
    """A run dir like train.py leaves: metrics.jsonl (config, train, eval records) and final.json."""
    os.makedirs(run_dir, exist_ok=True)
    lines = [{"kind": "config", "config": {"optimizer": {"name": optimizer}, "logging": {"run_name": name}}}]
    for i, vl in enumerate(val_losses):
        step = 10 * i
        c = dict(tokens=1000 * step, model_flops=round(flops_per_step * step * (1 - opt_share)),
                 optimizer_flops=round(flops_per_step * step * opt_share), total_flops=flops_per_step * step,
                 elapsed_s=sec_per_step * step)
        lines.append(dict(kind="train", step=step, loss=vl + 0.1, lr=1e-3, grad_norm=1.0, tokens_per_s=1000.0, **c))
        lines.append(dict(kind="eval", step=step, val_loss=vl, **c))
    text = "".join(json.dumps(r) + "\n" for r in lines)
    if crash_artifacts:
        # A crashed run wrote a bogus eval at step 10 before being resumed and rewriting it; then a
        # later crash cut the last line in half.
        bogus = dict(lines[4], val_loss=0.01)
        text = text.replace(json.dumps(lines[4]) + "\n", json.dumps(bogus) + "\n" + json.dumps(lines[4]) + "\n")
        text += '{"kind": "eval", "step": 999, "val_lo'
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.write(text)
    if finished:
        steps = 10 * (len(val_losses) - 1)
        final = dict(steps=steps, best_val_loss=min(val_losses), final_val_loss=val_losses[-1], tokens=1000 * steps,
                     model_flops=flops_per_step * steps * (1 - opt_share),
                     optimizer_flops=flops_per_step * steps * opt_share, total_flops=flops_per_step * steps,
                     elapsed_s=sec_per_step * steps)
        with open(os.path.join(run_dir, "final.json"), "w") as f:
            json.dump(final, f)


@pytest.fixture
def two_runs(tmp_path):
    a = tmp_path / "run_a"
    b = tmp_path / "run_b"
    # "muon-lr" reaches the lower loss with fewer FLOPs; "adam-lr" is worse and unfinished.
    make_run(a, "muon-lr", "muon", [5.0, 4.0, 3.2, 3.0], flops_per_step=1e12, opt_share=0.02)
    make_run(b, "adam-lr", "adamw", [5.0, 4.4, 3.9, 3.6, 3.5], flops_per_step=2e12, opt_share=0.0,
             finished=False, sec_per_step=0.5, crash_artifacts=True)
    return str(a), str(b)


def is_png(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    img = matplotlib.image.imread(path)
    return img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def table_rows(table):
    """The data rows of the markdown table, as lists of cells."""
    rows = [l.strip().strip("|").split("|") for l in table.strip().splitlines()[2:]]
    return [[c.strip() for c in r] for r in rows]


def test_load_run_tolerates_duplicates_and_truncation(two_runs):
    run = plot.load_run(two_runs[1])
    steps = [e["step"] for e in run.evals]
    assert steps == [0, 10, 20, 30, 40]  # no duplicate step 10, no half-written step 999
    assert run.evals[1]["val_loss"] == 4.4  # the last record for a step wins, not the bogus one
    assert run.best_val_loss == 3.5 and run.final_val_loss == 3.5 and not run.finished
    assert run.total_flops == 2e12 * 40 and run.label == "adam-lr" and run.optimizer == "adamw"


def test_plot_pngs_and_table(two_runs, tmp_path, capsys):
    out = tmp_path / "figs" / "loss.png"
    table_file = tmp_path / "table.md"
    plot.main([two_runs[1], two_runs[0], "--out", str(out), "--table", str(table_file)])
    assert is_png(out) and is_png(tmp_path / "figs" / "loss_pareto.png")
    table = capsys.readouterr().out
    assert table_file.read_text() == table
    rows = table_rows(table)
    assert [r[1] for r in rows] == ["muon-lr", "adam-lr (unfinished)"]  # ranked by best val loss
    assert [r[0] for r in rows] == ["1", "2"]
    assert rows[0][2:] == ["muon", "3.0000", "3.0000", "3e+13", "2.00%", "30.0 s"]
    assert rows[1][2:] == ["adamw", "3.5000", "3.5000", "8e+13", "0.00%", "20.0 s"]


@pytest.mark.parametrize("x", ["tokens", "time"])
def test_other_x_axes(two_runs, tmp_path, x, capsys):
    out = tmp_path / f"{x}.png"
    plot.main([*two_runs, "--x", x, "--out", str(out)])
    assert is_png(out) and is_png(tmp_path / f"{x}_pareto.png")


def test_pareto_front():
    pts = [(1, 3.0), (2, 2.0), (3, 2.5), (4, 1.0), (4, 1.5), (0.5, math.nan)]
    assert plot.pareto_front(pts) == [0, 1, 3]
    assert plot.pareto_front([]) == []


def test_duplicate_labels_are_disambiguated(tmp_path):
    for d in ("x", "y"):
        make_run(tmp_path / d, "same", "lion", [4.0, 3.0], 1e12, 0.01)
    labels = [r.label for r in plot.load_runs([str(tmp_path / "x"), str(tmp_path / "y")])]
    assert len(set(labels)) == 2 and all(l.startswith("same") for l in labels)


def test_label_defaults_to_dir_name(tmp_path):
    make_run(tmp_path / "lr3e-3", "", "lion", [4.0, 3.0], 1e12, 0.01)
    assert plot.load_run(str(tmp_path / "lr3e-3")).label == "lr3e-3"


def test_missing_metrics_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="no metrics.jsonl"):
        plot.load_run(str(tmp_path))
    p = subprocess.run([sys.executable, "plot.py", str(tmp_path), "--out", str(tmp_path / "f.png")], cwd=REPO,
                       capture_output=True, text=True, check=False)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error:") and "metrics.jsonl" in p.stderr
    assert not (tmp_path / "f.png").exists()


def test_sweep_dir_and_glob_expand(two_runs, tmp_path):
    (tmp_path / "summary.md").write_text("# not a run\n")
    names = sorted(r.label for r in plot.load_runs([str(tmp_path)]))  # the sweep directory itself
    assert names == ["adam-lr", "muon-lr"]
    globbed = [str(tmp_path / n) for n in sorted(os.listdir(tmp_path))]  # runs/sweep_x/* incl. summary.md
    assert sorted(r.label for r in plot.load_runs(globbed)) == ["adam-lr", "muon-lr"]
    with pytest.raises(DataError, match="no run directories"):
        plot.load_runs([str(tmp_path / "summary.md")])
