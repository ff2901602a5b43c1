"""Run a grid of training runs (e.g. a learning-rate sweep) and summarise it.

    python sweep.py BASE.toml --grid optimizer.lr=1e-3,3e-3 [--grid optimizer.lion_lr=5e-5,1e-4 ...]
                    [--out DIR] [--launcher "bash run.sh"] [--dry-run] [-- --train.max_steps=2000 ...]

Every cell of the cartesian product of the --grid values runs sequentially, one at a time, as

    <launcher> BASE.toml [extra overrides] --key=value ... \
        --logging.run_dir=DIR/<cell> --logging.run_name=<cell> --logging.group=<sweep name>

so each cell gets all GPUs through run.sh (the default launcher is the run.sh next to this file; BASE.toml
and DIR are passed as absolute paths because run.sh changes into the repo directory). The cell name is made from
its overrides
(optimizer.lr=1e-3, optimizer.lion_lr=5e-5 -> lr1e-3_lion_lr5e-5); the sweep name (the wandb group)
is the basename of DIR, by default runs/sweep_<BASE stem>.

Before any cell starts (and with --dry-run, instead of starting them), every cell's config is loaded and
validated as train.py will (config.load_config(BASE.toml, overrides, full_check=True)): a bad cell, e.g. a grid
key the chosen optimizer does not take, is one line naming the cell and the problem, and nothing runs (exit 2).

Restartable: a cell whose DIR/<cell>/final.json exists is finished and skipped; an unfinished cell
is launched again and train.py resumes it from its checkpoint. A failing cell is recorded and the
sweep goes on; the exit code is 1 if any cell failed.

At the end: DIR/summary.md (every cell, its status and best val loss) and DIR/heatmap.png (best val
loss per cell: a heatmap for two grid keys, a line for one; with three or more, the heatmap shows
the first two keys, each cell the minimum over the others), annotated, best cell marked, in the
style of the LionMuon paper's learning-rate heatmap (Figure 5). Only finished cells have a value: a failed
or unfinished one is "failed" / "n/a" in the figure and "—" in the table, and when no cell finished no
figure is drawn.
"""

import argparse
import dataclasses
import difflib
import hashlib
import itertools
import math
import os
import re
import shlex
import shutil
import subprocess
import sys

from config import SECTIONS, RunConfig, load_config
from errors import ConfigError, Interrupted, main_guard
from plot import fmt_flops, fmt_loss, fmt_time, load_run

RESERVED = ("logging.run_dir", "logging.run_name", "logging.group")  # set per cell by the sweep
MAX_NAME = 96  # keep cell directory names well under filesystem limits


def _check_key(key, where):
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS or not parts[1]:
        raise ConfigError(f"{where}: {key!r} is not a config key. Use section.key with section one of "
                          f"{', '.join(SECTIONS)}, e.g. optimizer.lr")
    if key in RESERVED:
        raise ConfigError(f"{where}: {key} is set by the sweep for every cell. Remove it; use --out to "
                          f"choose where the runs go")
    section, name = parts
    if section != "optimizer":  # an optimizer key is checked per cell, against the recipe that cell runs
        fields = [f.name for f in dataclasses.fields(type(getattr(RunConfig(), section)))]
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {section}.{close[0]}? " if close else ""
            raise ConfigError(f"{where}: unknown key {key}; {hint}valid keys of [{section}]: {', '.join(fields)}")


def parse_grid(specs):
    """['optimizer.lr=1e-3,3e-3', ...] -> [('optimizer.lr', ['1e-3', '3e-3']), ...] (order kept)."""
    grid = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep:
            example = key if key.count(".") == 1 else "optimizer.lr"
            raise ConfigError(f"--grid {spec!r} has no '=' and so no values. Write --grid {example}=V1,V2,..., "
                              f"e.g. --grid optimizer.lr=1e-3,3e-3")
        _check_key(key, f"--grid {spec}")
        vals = values.split(",")
        if any(not v for v in vals):
            raise ConfigError(f"--grid {spec!r} has an empty value. Write --grid {key}=v1,v2 without empty items")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--grid {spec!r} repeats a value. List each value once")
        if key in (k for k, _ in grid):
            raise ConfigError(f"--grid {key} is given twice. Put all its values in one --grid {key}=v1,v2")
        grid.append((key, vals))
    return grid


def parse_extra(args, grid):
    """Overrides after `--`, applied to every cell: ['--train.max_steps=10', ...] -> [('train.max_steps', '10')]."""
    extra = []
    for a in args:
        key, sep, value = a.removeprefix("--").partition("=")
        if not a.startswith("--") or not sep:
            raise ConfigError(f"extra override {a!r} is malformed. Write it as --section.key=value after --")
        _check_key(key, f"override {a}")
        if key in (k for k, _ in grid):
            raise ConfigError(f"override {a} conflicts with --grid {key}. Keep it in one place")
        extra.append((key, value))
    return extra


def _slug(s):
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", s)


def _hash(s):
    return hashlib.sha1(s.encode()).hexdigest()[:6]


def cell_names(grid):
    """All cells of the grid in order, as (name, [(key, value), ...]).

    A name joins `<short key><value>` per grid key with '_', where the short key is the part after
    the section unless two grid keys share it (then the full key). A value that does not start like a
    number gets a '-' separator (name-adamw). Names are filesystem-safe and unique: a name that would
    collide or be too long gets a short hash of its overrides. Deterministic, so a restart finds its cells.
    """
    shorts = [k.split(".")[1] for k, _ in grid]
    shorts = [s if shorts.count(s) == 1 else k.replace(".", "_") for s, (k, _) in zip(shorts, grid)]
    cells = []
    for combo in itertools.product(*(vals for _, vals in grid)):
        overrides = [(k, v) for (k, _), v in zip(grid, combo)]
        parts = [s + ("" if re.match(r"[-+.0-9]", v) else "-") + v for s, v in zip(shorts, combo)]
        cells.append([_slug("_".join(parts)), overrides])
    names = [c[0] for c in cells]
    for c in cells:
        if names.count(c[0]) > 1 or len(c[0]) > MAX_NAME:
            raw = ",".join(f"{k}={v}" for k, v in c[1])
            c[0] = f"{c[0][:MAX_NAME - 7]}-{_hash(raw)}"
    return [tuple(c) for c in cells]


def _launcher_argv(launcher):
    if launcher is None:
        return ["bash", os.path.join(os.path.dirname(os.path.abspath(__file__)), "run.sh")]
    argv = shlex.split(launcher)
    if not argv:
        raise ConfigError("--launcher is empty. Use e.g. --launcher 'bash run.sh'")
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"launcher program {argv[0]!r} not found. Fix --launcher (default 'bash run.sh')")
    for a in argv[1:]:  # a script argument (run.sh, fake.py) must exist, or every cell would fail
        if a.endswith((".sh", ".py")) and not os.path.isfile(a):
            raise ConfigError(f"launcher script {a!r} not found. Run sweep.py from the repo root or fix --launcher")
    return argv


def cell_overrides(extra, overrides, cell_dir, name, group):
    """The overrides a cell passes to train.py: the extra ones, the cell's grid values, then where it logs."""
    return ([f"--{k}={v}" for k, v in extra + overrides]
            + [f"--logging.run_dir={cell_dir}", f"--logging.run_name={name}", f"--logging.group={group}"])


def cell_command(launcher_argv, base, extra, overrides, cell_dir, name, group):
    return launcher_argv + [base] + cell_overrides(extra, overrides, cell_dir, name, group)


def check_cells(base, extra, cells, out, group):
    """[(cell name, problem)] for every cell whose config does not load and validate as train.py will load it.

    Runs config.load_config with full_check=True (the recipe against its optimizer's constructor, the model size),
    so a grid key or value the chosen optimizer rejects is found before any cell starts.
    """
    bad = []
    for name, overrides in cells:
        cell_dir = os.path.join(os.path.abspath(out), name)
        try:
            load_config(base, cell_overrides(extra, overrides, cell_dir, name, group), full_check=True)
        except ConfigError as e:
            bad.append((name, str(e)))
    return bad


def _cell_result(cell_dir, name, overrides, status):
    """A row for the summary: status plus the run's numbers when it left any metrics."""
    run = None
    if os.path.isfile(os.path.join(cell_dir, "metrics.jsonl")):
        run = load_run(cell_dir)
    return dict(name=name, overrides=overrides, status=status, run=run,
                finished=os.path.isfile(os.path.join(cell_dir, "final.json")))


def _best(cell):
    """Best val loss of a finished cell, else NaN (a partial run's loss is not comparable)."""
    if cell["finished"] and cell["run"] is not None:
        return cell["run"].best_val_loss
    return math.nan


def summary_markdown(results, grid, base, sweep_name, command):
    keys = [k for k, _ in grid]
    losses = [_best(c) for c in results]
    finite = [x for x in losses if math.isfinite(x)]
    best = min(finite) if finite else math.nan
    lines = [f"# Sweep {sweep_name}", "",
             f"Base config: `{base}`", "",
             "Grid: " + "; ".join(f"`{k}` = {', '.join(v)}" for k, v in grid), "",
             f"Cell command: `{command}`", ""]
    if finite:
        i = losses.index(best)
        lines += [f"Best: **{results[i]['name']}** with best val loss {fmt_loss(best)}", ""]
    lines += ["| cell | " + " | ".join(keys) + " | status | best val loss | final val loss | total FLOPs | wall time |",
              "| --- | " + " | ".join("---" for _ in keys) + " | --- | ---: | ---: | ---: | ---: |"]
    for c, loss in zip(results, losses):
        r = c["run"]
        # Only a finished cell has numbers: a failed or stopped run's partial losses are not comparable.
        nums = ([fmt_loss(r.best_val_loss), fmt_loss(r.final_val_loss), fmt_flops(r.total_flops),
                 fmt_time(r.elapsed_s)] if r is not None and c["finished"] else ["—"] * 4)
        if loss == best:
            nums[0] = f"**{nums[0]}**"
        vals = [v for _, v in c["overrides"]]
        lines.append(f"| {c['name']} | " + " | ".join(vals) + f" | {c['status']} | " + " | ".join(nums) + " |")
    return "\n".join(lines) + "\n"


def _numeric(vals):
    try:
        return [float(v) for v in vals]
    except ValueError:
        return None


def heatmap_matrix(results, grid):
    """Best val loss per (first key, second key) value pair, the minimum over any further grid keys; NaN = none."""
    import numpy as np

    (_, rvals), (_, cvals) = grid[0], grid[1]
    m = np.full((len(rvals), len(cvals)), np.nan)
    for c in results:
        y = _best(c)
        i, j = rvals.index(c["overrides"][0][1]), cvals.index(c["overrides"][1][1])
        if math.isfinite(y) and not y >= m[i, j]:  # `not >=` is also true while m[i, j] is NaN
            m[i, j] = y
    return m


def _missing_label(cells):
    """What a point or square without a value shows: "failed" if one of its cells failed, else "n/a"."""
    return "failed" if any(c["status"].startswith("failed") for c in cells) else "n/a"


def plottable(results):
    """True if at least one cell finished with a finite best val loss (else there is nothing to draw)."""
    return any(math.isfinite(_best(c)) for c in results)


def plot_heatmap(results, grid, out, title="best validation loss"):
    """Best val loss per cell: heatmap over the first two grid keys (min over any others), or a line for one key.

    Returns False and draws nothing when no cell has a value (every cell failed or is unfinished)."""
    if not plottable(results):
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = {tuple(v for _, v in c["overrides"]): _best(c) for c in results}
    if len(grid) == 1:
        key, vals = grid[0]
        ys = [loss[(v,)] for v in vals]
        xs = _numeric(vals)
        fig, ax = plt.subplots(figsize=(6, 4))
        pos = xs if xs is not None else list(range(len(vals)))
        ax.plot(pos, ys, marker="o")
        if xs is not None and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set_xticks(pos, vals)
        ax.minorticks_off()
        by_value = {c["overrides"][0][1]: c for c in results}
        for v, p, y in zip(vals, pos, ys):
            if math.isfinite(y):
                ax.annotate(fmt_loss(y), (p, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
            else:  # failed / missing cell: no point, say so at the bottom of the axes
                ax.text(p, 0.02, _missing_label([by_value[v]] if v in by_value else []),
                        transform=ax.get_xaxis_transform(), ha="center", fontsize=8, color="grey")
        finite = [(y, p) for p, y in zip(pos, ys) if math.isfinite(y)]
        if finite:
            y, p = min(finite)
            ax.scatter([p], [y], marker="*", s=250, color="red", zorder=3, label=f"best {fmt_loss(y)}")
            ax.legend()
        ax.set_xlabel(key)
        ax.set_ylabel("best validation loss")
        ax.margins(y=0.12)  # room for the value labels above the points
        ax.grid(True, alpha=0.3)
        ax.set_title(title)
    else:
        (rkey, rvals), (ckey, cvals) = grid[0], grid[1]
        import numpy as np

        m = heatmap_matrix(results, grid)
        fig, ax = plt.subplots(figsize=(1.2 * len(cvals) + 3, 0.8 * len(rvals) + 2))
        cmap = plt.get_cmap("RdYlGn_r").with_extremes(bad="lightgrey")  # green = low loss = good; grey = n/a
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, aspect="auto")
        fig.colorbar(im, ax=ax, label="best validation loss")
        ax.set_xticks(range(len(cvals)), cvals)
        ax.set_yticks(range(len(rvals)), rvals)
        ax.set_xlabel(ckey)
        ax.set_ylabel(rkey)
        best = np.unravel_index(np.nanargmin(m), m.shape) if np.isfinite(m).any() else None
        def square(i, j):
            return [c for c in results if c["overrides"][0][1] == rvals[i] and c["overrides"][1][1] == cvals[j]]

        for i in range(len(rvals)):
            for j in range(len(cvals)):
                text = fmt_loss(m[i, j]) if np.isfinite(m[i, j]) else _missing_label(square(i, j))
                bold = best is not None and (i, j) == tuple(best)
                ax.text(j, i, text + (" ★" if bold else ""), ha="center", va="center", fontsize=9,
                        fontweight="bold" if bold else "normal")
        if best is not None:
            ax.add_patch(plt.Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="black",
                                       linewidth=2.5))
        ax.set_title(title + ("" if len(grid) == 2 else " (min over " + ", ".join(k for k, _ in grid[2:]) + ")"),
                     fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line (main_guard), not argparse's usage block
        raise ConfigError(f"{message}. See python sweep.py --help")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    extra_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = _Parser(description=__doc__.split("\n")[0],
                epilog="Overrides after -- apply to every cell, e.g. -- --train.max_steps=2000")
    p.add_argument("base", metavar="BASE.toml")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a grid axis (repeatable)")
    p.add_argument("--out", default=None, help="sweep directory (default runs/sweep_<BASE stem>)")
    p.add_argument("--launcher", default=None, help="command that runs one config (default: bash run.sh)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate every cell's config, print the commands of the valid cells, and exit")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        if all(a.startswith("--") and "." in a.split("=")[0] for a in unknown):
            raise ConfigError(f"{' '.join(unknown)}: config overrides for every cell go after a lone `--`, e.g. "
                              f"python sweep.py BASE.toml --grid optimizer.lr=1e-3,3e-3 -- {unknown[0]}")
        raise ConfigError(f"unrecognized arguments: {' '.join(unknown)}. See python sweep.py --help")

    if not os.path.isfile(args.base):
        raise ConfigError(f"base config {args.base} not found. Pass an existing TOML file")
    if not args.grid:
        raise ConfigError("no --grid given. Add at least one, e.g. --grid optimizer.lr=1e-3,3e-3")
    grid = parse_grid(args.grid)
    extra = parse_extra(extra_args, grid)
    out = args.out or os.path.join("runs", f"sweep_{os.path.splitext(os.path.basename(args.base))[0]}")
    sweep_name = os.path.basename(os.path.normpath(os.path.abspath(out)))
    launcher = _launcher_argv(args.launcher)
    cells = cell_names(grid)
    base = os.path.abspath(args.base)

    # Every cell's config is checked before any cell starts: a grid key the chosen optimizer rejects would otherwise
    # fail every cell, one after the other.
    bad = check_cells(base, extra, cells, out, sweep_name)
    for name, problem in bad:
        print(f"error: cell {name}: {problem}", file=sys.stderr)
    if bad and not args.dry_run:
        raise ConfigError(f"{len(bad)} of {len(cells)} cells have an invalid config (above), so no cell was started. "
                          f"Fix the --grid values or the overrides after --, and check with --dry-run")
    if args.dry_run:
        bad_names = {n for n, _ in bad}
        for name, overrides in cells:
            if name in bad_names:
                continue
            cell_dir = os.path.join(out, name)
            cmd = cell_command(launcher, base, extra, overrides, os.path.abspath(cell_dir), name, sweep_name)
            done = os.path.isfile(os.path.join(cell_dir, "final.json"))
            print(("# finished, would skip: " if done else "") + shlex.join(cmd))
        if bad:
            raise ConfigError(f"{len(bad)} of {len(cells)} cells have an invalid config (above). Fix the --grid "
                              f"values or the overrides after --")
        return 0

    results, failed = [], 0
    try:
        for n, (name, overrides) in enumerate(cells, 1):
            cell_dir = os.path.join(out, name)
            cmd = cell_command(launcher, base, extra, overrides, os.path.abspath(cell_dir), name, sweep_name)
            if os.path.isfile(os.path.join(cell_dir, "final.json")):
                print(f"[sweep {n}/{len(cells)}] {name}: finished earlier, skipping", flush=True)
                results.append(_cell_result(cell_dir, name, overrides, "finished earlier"))
                continue
            print(f"[sweep {n}/{len(cells)}] {name}: {shlex.join(cmd)}", flush=True)
            try:
                rc = subprocess.run(cmd, check=False).returncode
            except KeyboardInterrupt:  # Ctrl-C reaches the cell too (same process group); train.py checkpoints
                results.append(_cell_result(cell_dir, name, overrides, "interrupted"))
                raise Interrupted(f"Ctrl-C during cell {n}/{len(cells)} ({name}); summary.md has the cells so far. "
                                  f"Rerun the same command to continue: finished cells are skipped, this one "
                                  f"resumes from its checkpoint") from None
            if rc == 0 and os.path.isfile(os.path.join(cell_dir, "final.json")):
                status = "done"
            else:
                # exit 0 without final.json: the run stopped early (e.g. train.stop_after); rerun to continue
                status = f"failed (exit {rc})" if rc else "unfinished (no final.json)"
                failed += 1
                print(f"[sweep {n}/{len(cells)}] {name}: {status}; continuing", file=sys.stderr, flush=True)
            results.append(_cell_result(cell_dir, name, overrides, status))
    finally:
        # Also on Ctrl-C: summarise what has run so far (a rerun picks up the rest).
        if results:
            for name, overrides in cells[len(results):]:
                results.append(_cell_result(os.path.join(out, name), name, overrides, "not run"))
            os.makedirs(out, exist_ok=True)
            template = shlex.join(cell_command(launcher, base, extra, [(k, "…") for k, _ in grid],
                                               os.path.join(os.path.abspath(out), "<cell>"), "<cell>", sweep_name))
            summary = summary_markdown(results, grid, args.base, sweep_name, template)
            summary_path, figure = os.path.join(out, "summary.md"), os.path.join(out, "heatmap.png")
            with open(summary_path, "w") as f:
                f.write(summary)
            print(summary, end="")
            if plot_heatmap(results, grid, figure, f"best validation loss, sweep {sweep_name}"):
                print(f"wrote {summary_path} and {figure}", file=sys.stderr)
            else:
                print(f"wrote {summary_path}; no cell finished, so no {os.path.basename(figure)} was drawn",
                      file=sys.stderr)
    if failed:
        print(f"error: {failed} of {len(cells)} cells did not finish (see {os.path.join(out, 'summary.md')}). "
              f"Fix the cause and rerun the same command: finished cells are skipped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
