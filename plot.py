"""Plot validation loss vs training FLOPs (or tokens, or wall time) for many runs.

    python plot.py RUN_DIR... [--x flops|tokens|time] [--out fig.png] [--table table.md]
    python plot.py runs/sweep_x            # a sweep directory stands for all its runs

Reads only RUN_DIR/metrics.jsonl (+ RUN_DIR/final.json when the run finished), so no network is needed.
Runs are grouped by recipe (group_recipes: the same optimizer and config but for the seed), so seeds are pooled:
  --out                 val loss vs the chosen x axis, one curve per recipe: the mean over its runs with a ±1 std
                        band when it has several; on FLOPs a log axis that is linear from 0 up to the first eval,
                        so that the step-0 point (0 FLOPs) shows;
  <out stem>_pareto.png best val loss vs total FLOPs, one point per recipe (mean, ±1 std bar, the runs faint),
                        with the Pareto frontier of the recipes (none beats it on both FLOPs and loss),
                        in the style of the LionMuon paper's loss-vs-FLOPs figures;
and prints markdown tables ranked by best val loss (also to --table FILE): per recipe, mean ± sample std over
its n runs (only when some recipe has several runs), then per run.
A recipe has the same colour, line style and marker in both figures (recipe_styles); the legends, right of the
axes, rank the recipes and give n and the best val loss. draw_curves / draw_pareto return the Figures.

The reader tolerates what a crash or a resume can leave behind: a truncated last line and repeated
steps (the last record per (kind, step) wins).
"""

import argparse
import json
import math
import os
import sys
import zlib
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


# Evaluations beyond the val loss (evaluation.py): a column each when some run has them (its last eval's value).
EXTRA_EVALS = (("val_bpb", "val bpb"), ("hellaswag_acc_norm", "hellaswag acc_norm"))


def last_eval(run, key):
    vals = [r[key] for r in run.evals if isinstance(r.get(key), (int, float))]
    return vals[-1] if vals else math.nan


def mean_sd(xs):
    """(mean, sample sd with n - 1), nan where undefined (no values; sd of one value)."""
    xs = [float(x) for x in xs]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def markdown_table(runs):
    """Markdown table of runs sorted by best val loss (runs without any eval last)."""
    extras = [(k, name) for k, name in EXTRA_EVALS if any(math.isfinite(last_eval(r, k)) for r in runs)]
    rows = ["| # | run | optimizer | best val loss | final val loss | total FLOPs | optimizer FLOPs | wall time |" +
            "".join(f" {name} |" for _, name in extras),
            "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(extras)]
    for i, r in enumerate(sorted(runs, key=_sort_key), 1):
        share = r.optimizer_flops / r.total_flops if r.total_flops and math.isfinite(r.total_flops) else math.nan
        name = (r.label if r.finished else f"{r.label} (unfinished)").replace("|", "\\|")
        rows.append(f"| {i} | {name} | {r.optimizer} | {fmt_loss(r.best_val_loss)} | {fmt_loss(r.final_val_loss)} "
                    f"| {fmt_flops(r.total_flops)} | {'—' if not math.isfinite(share) else f'{share:.2%}'} "
                    f"| {fmt_time(r.elapsed_s)} |" + "".join(f" {fmt_loss(last_eval(r, k))} |" for k, _ in extras))
    return "\n".join(rows) + "\n"


# ---- recipes: the runs that differ only in their seed ----

# Config keys that do not change what a run computes: two runs that differ only in these are seeds of one recipe.
_NOT_RECIPE_SECTIONS = ("logging", "checkpoint")
_NOT_RECIPE_KEYS = ("train.seed", "train.stop_after", "train.micro_batch", "train.compile", "train.device",
                    "train.target_val_loss", "train.log_interval", "data.source")  # record, or change no number


def _flat(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _recipe_settings(run):
    """The run's config as {dotted key: value}, less the keys that do not make a different recipe."""
    return {k: v for k, v in _flat(run.config)
            if k.split(".")[0] not in _NOT_RECIPE_SECTIONS and k not in _NOT_RECIPE_KEYS}


def _show(v):
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "null"  # metrics.jsonl writes inf (LionMuon's period = inf) as null
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


@dataclass
class Recipe:
    """The runs of one recipe (group_recipes): the same optimizer and config but for the seed."""
    label: str
    runs: list
    name: str = ""  # the label without the keys that tell recipes of one name apart

    @property
    def n(self):
        return len(self.runs)

    @property
    def unfinished(self):
        return sum(not r.finished for r in self.runs)

    @property
    def method(self):
        """The optimizer the recipe runs (config optimizer.method), or its name."""
        return _method(self.runs[0])

    def stat(self, attr):
        """(mean, sample std) of a Run property over the runs where it is finite; std is nan for n < 2."""
        vals = [getattr(r, attr) for r in self.runs]
        return mean_sd(v for v in vals if isinstance(v, (int, float)) and math.isfinite(v))


def _method(run):
    """The optimizer a run ran: config optimizer.method (a recipe's optimizer), else its name."""
    o = run.config.get("optimizer") or {}
    return o.get("method") or o.get("name") or run.optimizer


def group_recipes(runs):
    """The runs grouped by recipe, best mean best-val-loss first (recipes without any eval last).

    Two runs are seeds of one recipe when they ran the same optimizer (config optimizer.method, else optimizer.name)
    and their configs agree on every key both hold, less the seed, the logging and checkpoint sections and the keys
    that change no number (train.micro_batch, compile, device, stop_after). So the seeds of a recipe are pooled,
    while the cells of an LR sweep, or LionMuon with two periods under one name, stay apart; a key that only one of
    the two configs holds (a config key added by a later version of the code) does not split them.
    A recipe is labelled by its runs' optimizer names (`Run.optimizer`, the recipe name unless it is just the
    optimizer's) and, where several recipes share that label, the keys they differ in ("lionmuon period=5").
    A run without a config is a recipe of its own, labelled like the run.
    """
    groups = []  # [method, merged settings, runs]
    for r in runs:
        if not r.config:
            groups.append([None, {}, [r]])
            continue
        settings = {k: v for k, v in _recipe_settings(r).items() if k not in ("optimizer.name", "optimizer.method")}
        method = _method(r)
        for g in groups:
            if g[0] == method and all(g[1][k] == v for k, v in settings.items() if k in g[1]):
                for k, v in settings.items():
                    g[1].setdefault(k, v)
                g[2].append(r)
                break
        else:
            groups.append([method, settings, [r]])
    bases = []
    for method, _, rs in groups:
        if method is None:
            bases.append(rs[0].label)
            continue
        names = list(dict.fromkeys(r.optimizer for r in rs))
        bases.append(" = ".join(n for n in names if n != method) or method)
    labels = list(bases)
    for base in set(bases):
        same = [i for i, b in enumerate(bases) if b == base and groups[i][0] is not None]
        if len(same) < 2:
            continue
        keys = sorted(set().union(*(groups[i][1] for i in same)), key=lambda k: (not k.startswith("optimizer."), k))
        differ = [k for k in keys if len({_show(groups[i][1][k]) for i in same if k in groups[i][1]}) > 1]
        for i in same:
            text = ", ".join(f"{k.removeprefix('optimizer.')}={_show(groups[i][1][k])}" for k in differ
                             if k in groups[i][1])
            labels[i] = f"{base} {text[:60] + '…' if len(text) > 60 else text}".strip()
    seen, recipes = {}, []
    for label, base, (_, _, rs) in zip(labels, bases, groups):
        seen[label] = seen.get(label, 0) + 1
        recipes.append(Recipe(label if seen[label] == 1 else f"{label} #{seen[label]}", rs, base))

    def order(rec):
        loss = rec.stat("best_val_loss")[0]
        return (not math.isfinite(loss), loss if math.isfinite(loss) else 0.0, rec.label)
    return sorted(recipes, key=order)


# ---- colours: one style per recipe, the same in every figure ----

# A qualitative palette (matplotlib's tab10, then black and four more dark colours).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#000080", "#b8860b", "#008080", "#800000")
# The palette slot each optimizer asks for first: the same optimizer keeps its colour from one figure set to the next.
HOME_SLOT = {"muon": 0, "lion": 1, "lionmuon": 2, "ademamix": 3, "normuon": 4, "signum": 5, "leo": 6, "soap": 7,
             "signmuon": 8, "olion": 9, "adamw": 10}
# Past len(PALETTE) recipes, colours repeat with another line style and marker, so every recipe stays distinct.
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")


@dataclass(frozen=True)
class Style:
    color: str
    linestyle: str
    marker: str


def recipe_styles(recipes):
    """{recipe label: Style}, a function of the set of recipe labels only (so the curve and Pareto figures agree),
    distinct for every recipe. Each recipe asks for its optimizer's home slot (HOME_SLOT, by recipe name, else by the
    method it runs, else a fixed hash of its name) and takes the next free slot when that one is taken."""
    styles, used, rnd = {}, set(), 0
    for rec in sorted(recipes, key=lambda r: r.label):
        if len(used) == len(PALETTE):
            used, rnd = set(), rnd + 1
        name = (rec.name or rec.label).lower()
        method = str(rec.method).lower()
        slot = HOME_SLOT.get(name, HOME_SLOT.get(method, zlib.crc32(name.encode()) % len(PALETTE)))
        while slot in used:
            slot = (slot + 1) % len(PALETTE)
        used.add(slot)
        styles[rec.label] = Style(PALETTE[slot], LINESTYLES[rnd % len(LINESTYLES)], MARKERS[rnd % len(MARKERS)])
    return styles


def _legend_text(rank, rec):
    mean, sd = rec.stat("best_val_loss")
    best = fmt_loss(mean) + (f" ± {sd:.4f}" if math.isfinite(sd) else "")
    extra = f", {rec.unfinished} unfinished" if rec.unfinished else ""
    return f"{rank}. {rec.label} (n={rec.n}{extra}): best {best}"


# ---- tables ----

def _mean_sd(rec, attr, fmt):
    mean, sd = rec.stat(attr)
    if not math.isfinite(mean):
        return "—"
    return fmt(mean) + (f" ± {fmt(sd)}" if math.isfinite(sd) else "")


def recipe_table(runs):
    """Markdown table of recipes (group_recipes) ranked by mean best val loss: mean ± sample std over the n runs."""
    rows = ["| # | recipe | n | best val loss | final val loss | total FLOPs | optimizer FLOPs | wall time |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, rec in enumerate(group_recipes(runs), 1):
        name = (rec.label + (f" ({rec.unfinished} unfinished)" if rec.unfinished else "")).replace("|", "\\|")
        shares = [r.optimizer_flops / r.total_flops for r in rec.runs if r.total_flops and math.isfinite(r.total_flops)]
        share = sum(shares) / len(shares) if shares else math.nan
        rows.append(f"| {i} | {name} | {rec.n} | {_mean_sd(rec, 'best_val_loss', fmt_loss)} "
                    f"| {_mean_sd(rec, 'final_val_loss', fmt_loss)} | {fmt_flops(rec.stat('total_flops')[0])} "
                    f"| {'—' if not math.isfinite(share) else f'{share:.2%}'} | {fmt_time(rec.stat('elapsed_s')[0])} |")
    return "\n".join(rows) + "\n"


def tables(runs):
    """What plot.py prints: the per-run table; with several seeds of a recipe, the per-recipe table first."""
    if all(rec.n == 1 for rec in group_recipes(runs)):
        return markdown_table(runs)
    return ("Per recipe (mean ± sample std over the n runs that differ only in their seed):\n\n" + recipe_table(runs)
            + "\nPer run:\n\n" + markdown_table(runs))


# ---- figures ----

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt
    return plt


def _figure(figsize):
    """A Figure outside pyplot's state: nothing to close, and it can be inspected (tests) or saved."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _short_number(v, digits):
    if v == 0:
        return "0"
    s = f"{v:.{digits}g}"
    return s.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _nice_linear(lo, hi, n=6):
    from matplotlib.ticker import MaxNLocator
    return [t for t in MaxNLocator(nbins=n, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if lo <= t <= hi]


def _readable_ticks():
    """A Locator and a Formatter for a log or symlog axis that stay readable on any range: decades when the range
    spans 3 or more, 1-2-5 within each decade on 1-3 decades, evenly spaced round values within one decade (where
    matplotlib's log locator labels nothing or a single tick); a symlog axis also gets a tick at 0. Labels carry
    the fewest digits that write each tick exactly ("1.5e12", "2e12")."""
    from matplotlib.ticker import Formatter, Locator

    class ReadableLocator(Locator):
        def __call__(self):
            lo, hi = self.axis.get_view_interval()
            return self.tick_values(lo, hi)

        def tick_values(self, lo, hi):
            lo, hi = min(lo, hi), max(lo, hi)
            ticks = [0.0] if lo <= 0 <= hi else []
            linthresh = getattr(self.axis.get_transform(), "linthresh", None)  # symlog: log above linthresh
            plo = max(lo, linthresh) if linthresh else lo
            if plo <= 0 or hi <= plo:
                return ticks
            if hi / plo < 10:
                return ticks + _nice_linear(plo, hi)
            first, last = math.floor(math.log10(plo)), math.ceil(math.log10(hi))
            subs = (1,) if last - first > 3 else (1, 2, 5)
            return ticks + [m * 10.0 ** d for d in range(first, last + 1) for m in subs if plo <= m * 10.0 ** d <= hi]

    class ShortFormatter(Formatter):
        digits = 3

        def set_locs(self, locs):
            super().set_locs(locs)
            for self.digits in range(1, 8):  # the fewest digits that still write every tick exactly
                if all(math.isclose(float(_short_number(v, self.digits)), v, rel_tol=1e-9) for v in locs):
                    break

        def __call__(self, x, pos=None):
            return _short_number(x, self.digits)

    return ReadableLocator(), ShortFormatter()


def _readable_log_x(ax, xs):
    """Log x axis over the values xs, with readable ticks; when some x is 0 (the step-0 eval on a FLOPs axis), a
    symlog axis, linear from 0 to the smallest positive x (12 % of the width) and log above, so that point shows.
    Returns the linear range's end, or None for a plain log axis (or a linear one when no x is positive)."""
    from matplotlib.ticker import NullLocator

    pos = [x for x in xs if x > 0]
    if not pos:  # only step 0 so far: nothing to put on a log scale
        return None
    lo, hi = min(pos), max(pos)
    if hi <= lo:  # one positive value: show a decade around it
        lo, hi = lo / 3, hi * 3
    linthresh = None
    if any(x == 0 for x in xs):
        linthresh = lo
        decades = math.log10(hi / lo)
        frac = 0.12
        lin_width = frac / (1 - frac) * decades  # the linear range's width, in decades of the log range
        ax.set_xscale("symlog", linthresh=linthresh, linscale=lin_width * (1 - 1 / 10))
        margin = 0.03 * (lin_width + decades)  # in decades; the linear range maps linthresh to lin_width decades
        ax.set_xlim(-margin / lin_width * linthresh, hi * 10 ** margin)
    else:
        ax.set_xscale("log")
        margin = 0.05 * math.log10(hi / lo)
        ax.set_xlim(lo / 10 ** margin, hi * 10 ** margin)
    locator, formatter = _readable_ticks()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter)
    ax.xaxis.set_minor_locator(NullLocator())
    return linthresh


def _readable_y(ax):
    """Plain numbers on the loss axis, no offset ("+3.28" in the corner) even on a range like 3.28-3.31."""
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 2.5, 5, 10]))


def _legend(ax, title=None):
    """The legend right of the axes, so it hides no curve or point."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, title=title, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0)


def _mean_curve(rec, key):
    """(xs, mean val loss, sample std or nan, n) per eval step of a recipe: the runs that logged that step."""
    by_step = {}
    for r in rec.runs:
        for e in r.evals:
            x, y = e.get(key), e.get("val_loss")
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (x, y)) and x >= 0:
                by_step.setdefault(e["step"], []).append((x, y))
    xs, means, sds, ns = [], [], [], []
    for s in sorted(by_step):
        pts = by_step[s]
        m = sum(y for _, y in pts) / len(pts)
        xs.append(sum(x for x, _ in pts) / len(pts))
        means.append(m)
        sds.append(math.sqrt(sum((y - m) ** 2 for _, y in pts) / (len(pts) - 1)) if len(pts) > 1 else math.nan)
        ns.append(len(pts))
    return xs, means, sds, ns


def draw_curves(runs, x):
    """The Figure of val loss vs `x` ("flops", "tokens" or "time"): one line per recipe (group_recipes), the mean of
    its runs at each eval step, with a ±1 std band where several runs logged the step. Styles from recipe_styles."""
    key, xlabel = X_AXES[x]
    recipes = group_recipes(runs)
    styles = recipe_styles(recipes)
    fig, ax = _figure((10, 5.2))
    all_x, banded = [], False
    for rank, rec in enumerate(recipes, 1):
        xs, means, sds, ns = _mean_curve(rec, key)
        if not xs:
            continue
        st = styles[rec.label]
        all_x += xs
        ax.plot(xs, means, color=st.color, linestyle=st.linestyle, marker=st.marker, markersize=3.5,
                label=_legend_text(rank, rec), gid=f"recipe:{rec.label}")
        if any(n > 1 for n in ns):
            lo = [m - (s if n > 1 else 0) for m, s, n in zip(means, sds, ns)]
            hi = [m + (s if n > 1 else 0) for m, s, n in zip(means, sds, ns)]
            ax.fill_between(xs, lo, hi, where=[n > 1 for n in ns], color=st.color, alpha=0.2, linewidth=0,
                            gid=f"band:{rec.label}")
            banded = True
    if x == "flops" and all_x:
        linthresh = _readable_log_x(ax, all_x)
        if linthresh:
            xlabel += f"; log scale, linear from 0 to {_short_number(linthresh, 3)} so that step 0 shows at 0"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss")
    _readable_y(ax)
    what = X_AXES[x][1].split(" (")[0]
    ax.set_title(f"validation loss vs {what}" + (": mean over seeds, band ±1 std" if banded else ""), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, title="recipe (n runs): best val loss")
    fig.tight_layout()
    return fig


def _dodge(xs, step=0.015, close=0.012):
    """Factors that spread markers at about the same x on a log axis sideways, `step` of the axis width apart, so
    that recipes of equal FLOPs (same steps and batch; only the optimizer's FLOPs differ) do not hide one another.
    Points within `close` of the width form a cluster, kept in the order of x (so a frontier through them stays
    monotone) and centred on the cluster's middle."""
    if not xs:
        return []
    width = math.log10(max(xs) / min(xs)) or math.log10(9)  # one value: _readable_log_x shows x/3 .. 3x
    order = sorted(range(len(xs)), key=lambda i: (xs[i], i))
    clusters = []
    for i in order:
        if clusters and math.log10(xs[i] / xs[clusters[-1][-1]]) < close * width:
            clusters[-1].append(i)
        else:
            clusters.append([i])
    factors = [1.0] * len(xs)
    for c in clusters:
        mid = math.log10(xs[c[0]] * xs[c[-1]]) / 2
        for j, i in enumerate(c):
            factors[i] = 10 ** (mid + (j - (len(c) - 1) / 2) * step * width) / xs[i]
    return factors


def draw_pareto(runs):
    """The Figure of best val loss vs total FLOPs: one point per recipe (the mean over its runs, ±1 std bar when
    n > 1, hollow when a run is unfinished; the runs themselves as faint points) and the Pareto frontier of the
    recipes' means. Recipes at about the
    same FLOPs are drawn a little apart sideways (_dodge) so that none hides another, and the axis label says so."""
    recipes = group_recipes(runs)
    styles = recipe_styles(recipes)
    fig, ax = _figure((10, 5.2))
    points = []  # (rank, recipe, run FLOPs, run losses, mean FLOPs, mean loss, sd or None)
    for rank, rec in enumerate(recipes, 1):
        ok = [r for r in rec.runs if math.isfinite(r.best_val_loss) and math.isfinite(r.total_flops)
              and r.total_flops > 0]
        if ok:
            xs, ys = [r.total_flops for r in ok], [r.best_val_loss for r in ok]
            my = sum(ys) / len(ys)
            sd = math.sqrt(sum((y - my) ** 2 for y in ys) / (len(ys) - 1)) if len(ys) > 1 else None
            points.append((rank, rec, xs, ys, sum(xs) / len(xs), my, sd))
    factors = _dodge([p[4] for p in points])
    drawn_x = []
    for (rank, rec, xs, ys, mx, my, sd), f in zip(points, factors):
        st = styles[rec.label]
        if len(xs) > 1:
            ax.plot([x * f for x in xs], ys, linestyle="none", marker=st.marker, markersize=4, color=st.color,
                    alpha=0.35, gid=f"runs:{rec.label}")
        bar = ax.errorbar([mx * f], [my], yerr=None if sd is None else [sd], color=st.color, marker=st.marker,
                          markersize=7, capsize=4, linestyle="none", label=_legend_text(rank, rec), zorder=3,
                          markerfacecolor="white" if rec.unfinished else st.color)  # hollow: not all runs done
        bar.lines[0].set_gid(f"recipe:{rec.label}")
        drawn_x += [x * f for x in xs] + [mx * f]
    means = [(p[4], p[5]) for p in points]
    front = pareto_front(means)
    if front:
        ax.plot([means[i][0] * factors[i] for i in front], [means[i][1] for i in front], color="black",
                linewidth=1.2, alpha=0.6, drawstyle="steps-post", zorder=2, label="Pareto frontier (recipe means)",
                gid="frontier")
    if drawn_x:
        _readable_log_x(ax, drawn_x)
    dodged = any(abs(f - 1) > 1e-12 for f in factors)
    ax.set_xlabel(X_AXES["flops"][1] + (" (log scale; recipes of about equal FLOPs drawn side by side)" if dodged
                                        else " (log scale)"))
    ax.set_ylabel("best validation loss")
    _readable_y(ax)
    ax.set_title("best validation loss vs total FLOPs: one point per recipe"
                 + (" (mean; bar ±1 std; faint: the runs)" if any(len(p[2]) > 1 for p in points) else ""),
                 fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, title="recipe (n runs): best val loss")
    fig.tight_layout()
    return fig


def plot_curves(runs, x, out):
    """Write draw_curves(runs, x) to the PNG `out`."""
    draw_curves(runs, x).savefig(out, dpi=120, bbox_inches="tight")


def plot_pareto(runs, out):
    """Write draw_pareto(runs) to the PNG `out`."""
    draw_pareto(runs).savefig(out, dpi=120, bbox_inches="tight")


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
    table = tables(runs)
    print(table, end="")
    if args.table:
        with open(args.table, "w") as f:
            f.write(table)
    print(f"wrote {out} and {pareto_path(out)}", file=sys.stderr)


if __name__ == "__main__":
    main_guard(main)
