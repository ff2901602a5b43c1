"""Plot validation loss vs training FLOPs (or tokens, or wall time) for many runs.

    python plot.py RUN_DIR... [--x flops|tokens|time] [--out fig.png] [--table table.md]
    python plot.py runs/sweep_x            # a sweep directory stands for all its runs

Reads only RUN_DIR/metrics.jsonl (+ RUN_DIR/final.json when the run finished), so no network is needed.
Writes:
  --out                 val loss vs the chosen x axis, one curve per run (log x for FLOPs);
  <out stem>_pareto.png best val loss vs total FLOPs, one point per run, with the Pareto frontier
                        (runs no other run beats on both FLOPs and loss) overall and per optimizer,
                        in the style of the LionMuon paper's loss-vs-FLOPs figures;
and prints a markdown table sorted by best val loss (also to --table FILE).

The reader tolerates what a crash or a resume can leave behind: a truncated last line and repeated
steps (the last record per (kind, step) wins).
"""

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field

from errors import DataError, main_guard
from metrics import METRICS_FILE, read_records

X_AXES = {  # --x choice -> (record key, axis label)
    "flops": ("total_flops", "total training FLOPs (model + optimizer)"),
    "tokens": ("tokens", "training tokens"),
    "time": ("elapsed_s", "wall time (s)"),
}


@dataclass
class Run:
    """What plot.py and sweep.py need from one run directory."""
    dir: str
    label: str
    optimizer: str
    config: dict
    train: list = field(default_factory=list)   # train records, one per step, sorted by step
    evals: list = field(default_factory=list)   # eval records, one per step, sorted by step
    final: dict = None                          # final.json, or None if the run did not finish

    @property
    def finished(self):
        return self.final is not None

    def _last(self, key):
        """The latest value of a cumulative counter across train and eval records."""
        vals = [r[key] for r in self.train + self.evals if isinstance(r.get(key), (int, float))]
        return max(vals) if vals else math.nan

    def _stat(self, key, fallback):
        v = (self.final or {}).get(key)
        return v if isinstance(v, (int, float)) else fallback

    @property
    def best_val_loss(self):
        losses = [r["val_loss"] for r in self.evals if isinstance(r.get("val_loss"), (int, float))]
        return self._stat("best_val_loss", min(losses) if losses else math.nan)

    @property
    def final_val_loss(self):
        losses = [r["val_loss"] for r in self.evals if isinstance(r.get("val_loss"), (int, float))]
        return self._stat("final_val_loss", losses[-1] if losses else math.nan)

    @property
    def total_flops(self):
        return self._stat("total_flops", self._last("total_flops"))

    @property
    def optimizer_flops(self):
        return self._stat("optimizer_flops", self._last("optimizer_flops"))

    @property
    def elapsed_s(self):
        return self._stat("elapsed_s", self._last("elapsed_s"))


def _dedup(records):
    """Keep the last record per step (a crashed-and-resumed run may repeat steps), sorted by step."""
    by_step = {}
    for r in records:
        if isinstance(r.get("step"), int):
            by_step[r["step"]] = r
    return [by_step[s] for s in sorted(by_step)]


def load_run(run_dir):
    """Read one run directory; raise DataError if it has no metrics.jsonl."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{run_dir} has no {METRICS_FILE}. Pass run directories written by train.py "
                        f"(logging.run_dir)")
    records = read_records(path)
    config = next((r.get("config") or {} for r in records if r.get("kind") == "config"), {})
    final = None
    final_path = os.path.join(run_dir, "final.json")
    if os.path.isfile(final_path):
        try:
            with open(final_path) as f:
                final = json.load(f)
        except (OSError, json.JSONDecodeError):
            final = None  # written atomically, so a bad file is foreign; treat the run as unfinished
    label = ((config.get("logging") or {}).get("run_name")
             or os.path.basename(os.path.normpath(os.path.abspath(run_dir))))
    optimizer = (config.get("optimizer") or {}).get("name", "?")
    return Run(dir=run_dir, label=label, optimizer=optimizer, config=config,
               train=_dedup(r for r in records if r.get("kind") == "train"),
               evals=_dedup(r for r in records if r.get("kind") == "eval"), final=final)


def expand_run_dirs(paths):
    """Run directories from the command line, so that `plot.py runs/sweep_x` and `plot.py runs/sweep_x/*` work:
    a plain file (summary.md, heatmap.png) is skipped; a directory without metrics.jsonl whose
    subdirectories have one (a sweep directory) stands for those subdirectories."""
    dirs = []
    for p in paths:
        if os.path.isfile(p):
            continue
        if os.path.isdir(p) and not os.path.isfile(os.path.join(p, METRICS_FILE)):
            subs = sorted(os.path.join(p, d) for d in os.listdir(p)
                          if os.path.isfile(os.path.join(p, d, METRICS_FILE)))
            if subs:
                dirs += subs
                continue
        dirs.append(p)  # load_run reports a missing metrics.jsonl
    return dirs


def load_runs(paths):
    runs = [load_run(d) for d in expand_run_dirs(paths)]
    if not runs:
        raise DataError(f"no run directories among {' '.join(paths)}. Pass directories written by train.py")
    # Two runs with the same run_name (e.g. the same config in two places) must stay distinguishable.
    seen = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.label} ({r.dir})"
    return runs


def _sort_key(run):
    loss = run.best_val_loss
    return (not math.isfinite(loss), loss if math.isfinite(loss) else 0.0, run.label)


def pareto_front(points):
    """Indices of the points (flops, loss) that no other point beats: less or equal FLOPs and lower loss.

    Returned sorted by FLOPs. Points with a non-finite coordinate are ignored.
    """
    ok = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    ok.sort(key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in ok:  # sweeping FLOPs upward, a point is on the front iff it lowers the best loss so far
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


# ---- formatting ----

def fmt_flops(x):
    return "—" if not math.isfinite(x) else f"{x:.3g}"


def fmt_loss(x):
    return "—" if not math.isfinite(x) else f"{x:.4f}"


def fmt_time(s):
    if not math.isfinite(s):
        return "—"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def markdown_table(runs):
    """Markdown table of runs sorted by best val loss (runs without any eval last)."""
    rows = ["| # | run | optimizer | best val loss | final val loss | total FLOPs | optimizer FLOPs | wall time |",
            "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for i, r in enumerate(sorted(runs, key=_sort_key), 1):
        share = r.optimizer_flops / r.total_flops if r.total_flops and math.isfinite(r.total_flops) else math.nan
        name = (r.label if r.finished else f"{r.label} (unfinished)").replace("|", "\\|")
        rows.append(f"| {i} | {name} | {r.optimizer} | {fmt_loss(r.best_val_loss)} | {fmt_loss(r.final_val_loss)} "
                    f"| {fmt_flops(r.total_flops)} | {'—' if not math.isfinite(share) else f'{share:.2%}'} "
                    f"| {fmt_time(r.elapsed_s)} |")
    return "\n".join(rows) + "\n"


# ---- figures ----

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt
    return plt


def _log_x(ax):
    """Log x axis with readable labels: decades and 2×/5× ticks on a wide range, every integer multiple on a range
    narrower than a decade (matplotlib's defaults overlap or, on a narrow range, label nothing)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    label = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.xaxis.set_major_formatter(label)
    if hi / lo < 10:
        ax.xaxis.set_minor_locator(LogLocator(subs=tuple(range(1, 10))))
        ax.xaxis.set_minor_formatter(label)
    elif hi / lo < 300:
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(label)
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


def plot_curves(runs, x, out):
    """Val loss vs `x` ("flops", "tokens" or "time"), one line per run."""
    plt = _pyplot()
    key, xlabel = X_AXES[x]
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ["-", "--", ":", "-."]  # one line style per optimizer, so families stand out among many runs
    style = {o: styles[i % len(styles)] for i, o in enumerate(sorted({r.optimizer for r in runs}))}
    for r in sorted(runs, key=_sort_key):
        pts = [(e[key], e["val_loss"]) for e in r.evals
               if isinstance(e.get(key), (int, float)) and isinstance(e.get("val_loss"), (int, float))]
        if x == "flops":
            pts = [p for p in pts if p[0] > 0]  # log axis
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3, linestyle=style[r.optimizer],
                    label=f"{r.label} [{r.optimizer}] best {fmt_loss(r.best_val_loss)}")
    if x == "flops":
        _log_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss")
    ax.set_title(f"validation loss vs {xlabel}")
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_pareto(runs, out):
    """Best val loss vs total FLOPs per run; Pareto frontier overall (black) and per optimizer (dashed)."""
    plt = _pyplot()
    runs = [r for r in runs if math.isfinite(r.best_val_loss) and math.isfinite(r.total_flops) and r.total_flops > 0]
    fig, ax = plt.subplots(figsize=(8, 5))
    optimizers = sorted({r.optimizer for r in runs})
    colors = {o: plt.get_cmap("tab10")(i % 10) for i, o in enumerate(optimizers)}
    for o in optimizers:
        group = [r for r in runs if r.optimizer == o]
        pts = [(r.total_flops, r.best_val_loss) for r in group]
        ax.scatter(*zip(*pts), color=colors[o], label=o, zorder=3)
        front = [pts[i] for i in pareto_front(pts)]
        if len(optimizers) > 1 and len(front) > 1:
            ax.plot(*zip(*front), color=colors[o], linestyle="--", alpha=0.7, drawstyle="steps-post")
        for r, p in zip(group, pts):
            ax.annotate(r.label, p, textcoords="offset points", xytext=(4, 4), fontsize=7)
    pts = [(r.total_flops, r.best_val_loss) for r in runs]
    front = [pts[i] for i in pareto_front(pts)]
    if front:
        ax.plot(*zip(*front), color="black", linewidth=1.5, drawstyle="steps-post", label="Pareto frontier",
                zorder=2)
    _log_x(ax)
    ax.set_xlabel(X_AXES["flops"][1])
    ax.set_ylabel("best validation loss")
    ax.set_title("best validation loss vs total FLOPs")
    ax.grid(True, which="both", alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def pareto_path(out):
    stem, ext = os.path.splitext(out)
    return f"{stem}_pareto{ext or '.png'}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or a sweep directory")
    p.add_argument("--x", choices=sorted(X_AXES), default="flops", help="x axis of the loss curves")
    p.add_argument("--out", default=None, help="curves PNG (default val_loss_vs_<x>.png); "
                                               "the Pareto plot goes to <stem>_pareto.png")
    p.add_argument("--table", default=None, help="also write the markdown table to this file")
    args = p.parse_args(argv)
    out = args.out or f"val_loss_vs_{args.x}.png"
    runs = load_runs(args.run_dirs)
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    plot_curves(runs, args.x, out)
    plot_pareto(runs, pareto_path(out))
    table = markdown_table(runs)
    print(table, end="")
    if args.table:
        with open(args.table, "w") as f:
            f.write(table)
    print(f"wrote {out} and {pareto_path(out)}", file=sys.stderr)


if __name__ == "__main__":
    main_guard(main)
