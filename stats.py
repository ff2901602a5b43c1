"""Statistics over finished runs: per recipe mean ± sd, steps to a target loss, Welch's t-test and the Track 3 rules.

    python stats.py RUN_DIR... [--target 3.28] [--pairs best|all] [--alpha 0.05] [--out table.md]
    python stats.py runs/sweep_x            # a sweep directory stands for all its runs

Reads RUN_DIR/metrics.jsonl and RUN_DIR/final.json (plot.load_runs); a run without final.json is left out (one
warning). Runs are grouped as plot.py groups them (plot.group_recipes): the same optimizer recipe and the same
config except the seed, the logging and checkpoint sections and the keys that change no number; a group is named by
its recipe plus the keys in which groups of one recipe differ ("muon lr=0.01"). Prints markdown (also to --out):

  1. per group, sorted by mean best val loss: n, mean ± sample sd of the best and the final val loss, how many runs
     reached val loss < target, and mean ± sd of the first eval step below the target with its tokens and FLOPs;
  2. Welch's t-test on best val loss (two-sided, Welch–Satterthwaite degrees of freedom) of every group against the
     best group (--pairs best, the default) or of every pair (--pairs all): "A better than B (p=...)" or
     "no difference at α=0.05";
  3. the modded-nanogpt Track 3 rules (records/track_3_optimization/README.md): a group's record condition
     (target − mean final val loss)·√n ≥ 0.004, the earliest eval step at which the group's mean passes it, and
     the pairwise rule ((loss_B − loss_A) + 0.0045·(steps_B − steps_A)/100) / √(1/n_A + 1/n_B) ≥ 0.004.

When the runs record the code they ran (a `code` = {commit, dirty, diff_hash} dict in the first metrics.jsonl line,
a resume line or final.json), the table gets a commit column, and runs from different code give one warning.
docs/statistics.md says what every number is, the tests' assumptions and the sources.
"""

import argparse
import math
import os
import sys
import warnings
from dataclasses import dataclass, field

import plot
from errors import ConfigError, DataError, main_guard
from metrics import METRICS_FILE, read_records

# ---- Track 3 (modded-nanogpt records/track_3_optimization/README.md, "Rules" and "Pairwise statistical
# significance"): a one-sided z-test with an assumed per-run sd of 0.0013 at p < .001, i.e. 3.09σ ≈ 0.004.
TRACK3_TARGET = 3.28
TRACK3_DELTA = 0.004
TRACK3_LOSS_PER_100_STEPS = 0.0045  # the README's measured slope (result #12: 200 fewer steps cost 0.0091)
# The README's conditions are `>=` in exact arithmetic; its losses have 4 decimals, so (3.28 - 3.278) * 2 == 0.004
# must pass although the float product is 0.0039999999999995595.
_EPS = 1e-12


# ---- the Student t distribution, without scipy ----

def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (modified Lentz)."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a, b > 0, got {a}, {b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use I_x(a, b) = 1 - I_{1-x}(b, a)
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a, b, x, max_iter=100_000, eps=1e-15, tiny=1e-300):
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}) did not converge")


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    if math.isnan(t) or not df > 0:
        return math.nan
    if math.isinf(t):
        return 0.0
    return min(1.0, betainc(df / 2.0, 0.5, df / (df + t * t)))


# ---- sample statistics and Welch's t-test ----

mean_sd = plot.mean_sd  # (mean, sample sd): one definition, shared with plot.py's recipe tables


@dataclass
class Welch:
    mean_a: float
    mean_b: float
    t: float   # (mean_a - mean_b) / sqrt(s_a²/n_a + s_b²/n_b)
    df: float  # Welch–Satterthwaite
    p: float   # two-sided


def welch(a, b) -> Welch | None:
    """Welch's unequal-variance t-test of the means of samples a and b; None when it is undefined (a sample of
    fewer than 2 values, or no variance in either)."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
    va, vb = sa * sa / len(a), sb * sb / len(b)
    if va + vb == 0:
        return None
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    return Welch(ma, mb, t, df, t_two_sided_p(t, df))


# ---- the Track 3 rules ----

def track3_record(mean_loss: float, n: int, target: float = TRACK3_TARGET) -> tuple[float, bool]:
    """The record condition `(3.28 - avg_loss) * num_runs**0.5 >= 0.004`: (left-hand side, passes)."""
    lhs = (target - mean_loss) * math.sqrt(n)
    return lhs, lhs >= TRACK3_DELTA - _EPS


def track3_pairwise(loss_a: float, n_a: int, steps_a: float, loss_b: float, n_b: int, steps_b: float,
                    loss_per_100_steps: float = TRACK3_LOSS_PER_100_STEPS) -> tuple[float, bool]:
    """Is A statistically better than B? The README's `(final_loss_diff + exp_stepbased_loss_diff) /
    (1/n1 + 1/n2)**0.5 >= 0.004` with final_loss_diff = loss_B - loss_A and exp_stepbased_loss_diff = the loss that
    B's extra steps are worth, (steps_B - steps_A) / 100 * 0.0045. Returns (left-hand side, A better);
    a left-hand side <= -0.004 means B is better."""
    lhs = ((loss_b - loss_a) + (steps_b - steps_a) / 100.0 * loss_per_100_steps) / math.sqrt(1 / n_a + 1 / n_b)
    return lhs, lhs >= TRACK3_DELTA - _EPS


# ---- runs and groups ----

def code_versions(run) -> list:
    """The code versions a run recorded (metrics.jsonl's config and resume lines, final.json), oldest first, as
    (commit, dirty, diff_hash) tuples; [] when it recorded none."""
    found = [r.get("code") for r in read_records(os.path.join(run.dir, METRICS_FILE))
             if r.get("kind") in ("config", "resume")]
    found.append((run.final or {}).get("code"))
    out = []
    for c in found:
        if isinstance(c, str):
            c = {"commit": c}
        if isinstance(c, dict) and "commit" in c:
            v = (c.get("commit"), bool(c.get("dirty")), c.get("diff_hash") or "")
            if v not in out:
                out.append(v)
    return out


def code_text(v) -> str:
    commit, dirty, diff_hash = v
    text = str(commit)[:7] if commit else "no git"
    return text + (f"+dirty {diff_hash[:8]}" if dirty else "")


def first_below(run, target: float):
    """The first eval record whose val loss is below target, or None."""
    return next((e for e in run.evals if isinstance(e.get("val_loss"), (int, float)) and e["val_loss"] < target),
                None)


def _finite(xs):
    return [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]


@dataclass
class Group:
    label: str
    runs: list
    target: float
    reached: list = field(default_factory=list)  # first_below per run, None where never

    def __post_init__(self):
        self.reached = [first_below(r, self.target) for r in self.runs]

    @property
    def n(self):
        return len(self.runs)

    @property
    def best(self):
        return _finite(r.best_val_loss for r in self.runs)

    @property
    def final(self):
        return _finite(r.final_val_loss for r in self.runs)

    @property
    def steps(self):
        """The runs' common step count (final.json steps), or None when they differ."""
        s = {(r.final or {}).get("steps") for r in self.runs}
        return s.pop() if len(s) == 1 and None not in s else None

    @property
    def seeds(self):
        return [(r.config.get("train") or {}).get("seed") for r in self.runs]

    def track3_earliest(self):
        """Track 3's rule 5: the earliest eval step, the same for every run, at which (target − mean val loss)·√n
        >= 0.004 over the group's runs; (step, mean) or None."""
        by_step = [{e["step"]: e["val_loss"] for e in r.evals if isinstance(e.get("val_loss"), (int, float))}
                   for r in self.runs]
        for step in sorted(set.intersection(*(set(d) for d in by_step))):
            m = sum(d[step] for d in by_step) / len(by_step)
            if track3_record(m, len(by_step), self.target)[1]:
                return step, m
        return None


def load_groups(paths, target):
    """The finished runs among paths, grouped (plot.group_recipes) and ranked by mean best val loss."""
    runs = plot.load_runs(paths)
    unfinished = [r for r in runs if not r.finished]
    runs = [r for r in runs if r.finished]
    if not runs:
        raise DataError(f"no finished runs (with final.json) among {' '.join(paths)}: "
                        f"{len(unfinished)} run(s) are unfinished. Let them finish (rerun their train.py command)")
    if unfinished:
        warnings.warn(f"left out {len(unfinished)} unfinished run(s) (no final.json): "
                      + ", ".join(r.dir for r in unfinished[:5]) + (", …" if len(unfinished) > 5 else ""))
    groups = [Group(rec.label, rec.runs, target) for rec in plot.group_recipes(runs)]
    groups.sort(key=lambda g: (not g.best, mean_sd(g.best)[0] if g.best else 0.0, g.label))
    return groups


# ---- the report ----

def _ms(xs, fmt):
    m, s = mean_sd(xs)
    if not math.isfinite(m):
        return "—"
    return fmt(m) + (f" ± {fmt(s)}" if math.isfinite(s) else "")


def _loss(x):
    return f"{x:.4f}"


def _num(x):
    return f"{x:.3g}"


def _steps(x):
    return f"{x:.1f}".removesuffix(".0")


def _esc(text):
    return str(text).replace("|", "\\|")


def _p(p):
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def welch_verdict(a: Group, b: Group, alpha: float):
    """(Welch or None, verdict text) for the best val losses of groups a and b."""
    w = welch(a.best, b.best)
    if w is None:
        return None, "— (needs n ≥ 2 in both and some variance)"
    if w.p < alpha:
        better, worse = (a, b) if w.t < 0 else (b, a)
        return w, f"{better.label} better than {worse.label} (p={_p(w.p)})"
    return w, f"no difference at α={alpha:g} (p={_p(w.p)})"


def track3_verdict(a: Group, b: Group, slope: float):
    if not a.final or not b.final or a.steps is None or b.steps is None:
        return None, "— (needs finite final losses and one step count per group)"
    lhs, a_better = track3_pairwise(mean_sd(a.final)[0], len(a.final), a.steps, mean_sd(b.final)[0], len(b.final),
                                    b.steps, slope)
    if a_better:
        return lhs, f"{a.label} better"
    if -lhs >= TRACK3_DELTA - _EPS:
        return lhs, f"{b.label} better"
    return lhs, "not statsig"


def report(groups, target=TRACK3_TARGET, pairs="best", alpha=0.05, slope=TRACK3_LOSS_PER_100_STEPS) -> str:
    nruns = sum(g.n for g in groups)
    codes = {g.label: sorted({v for r in g.runs for v in code_versions(r)}, key=str) for g in groups}
    all_codes = {v for vs in codes.values() for v in vs}
    if len(all_codes) > 1:
        warnings.warn(f"the runs in this table come from {len(all_codes)} code versions "
                      f"({', '.join(sorted(code_text(v) for v in all_codes))}): a difference may be the code's")
    t = f"{target:g}"
    extras = [(key, name) for key, name in (("val_bpb", "final val bpb"), ("hellaswag_acc_norm", "hellaswag acc_norm"))
              if any(_finite([(r.final or {}).get(key)]) for g in groups for r in g.runs)]
    head = ["rank", "group", "n", "seeds", "best val loss", "final val loss", f"reached < {t}", f"steps to < {t}",
            "tokens then", "FLOPs then"] + [name for _, name in extras] + (["commit"] if all_codes else [])
    lines = [f"# Statistics: {nruns} finished run(s) in {len(groups)} group(s), target val loss {t}", "",
             "Mean ± sample sd over each group's runs (runs that differ only in seed, logging, checkpointing); "
             f"steps/tokens/FLOPs to < {t}: the first eval below the target, over the runs that reached it.", "",
             "| " + " | ".join(head) + " |", "| " + " | ".join(["---:", "---"] + ["---:"] * (len(head) - 2)) + " |"]
    for i, g in enumerate(groups, 1):
        hit = [e for e in g.reached if e is not None]
        row = [str(i), _esc(g.label), str(g.n), ",".join(str(s) for s in g.seeds),
               _ms(g.best, _loss) + (f" ({g.n - len(g.best)} non-finite)" if len(g.best) < g.n else ""),
               _ms(g.final, _loss) + (f" ({g.n - len(g.final)} non-finite)" if len(g.final) < g.n else ""),
               f"{len(hit)}/{g.n}", _ms([e["step"] for e in hit], _steps),
               _ms(_finite(e.get("tokens") for e in hit), _num), _ms(_finite(e.get("total_flops") for e in hit), _num)]
        row += [_ms(_finite((r.final or {}).get(key) for r in g.runs), _loss) for key, _ in extras]
        if all_codes:
            row.append(", ".join(code_text(v) for v in codes[g.label]) or "—")
        lines.append("| " + " | ".join(row) + " |")

    if len(groups) > 1:
        pair_list = ([(groups[0], g) for g in groups[1:]] if pairs == "best" else
                     [(a, b) for i, a in enumerate(groups) for b in groups[i + 1:]])
        which = (f"each group vs the best ({_esc(groups[0].label)})" if pairs == "best" else "every pair of groups")
        lines += ["", f"## Welch's t-test on best val loss: {which}", "",
                  f"Two-sided, Welch–Satterthwaite degrees of freedom, α = {alpha:g}. Δ = mean A − mean B.", "",
                  "| A | B | Δ best val loss | t | df | p | verdict |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for a, b in pair_list:
            w, text = welch_verdict(a, b, alpha)
            nums = (f"{w.mean_a - w.mean_b:+.4f} | {w.t:+.3f} | {w.df:.2f} | {_p(w.p)}" if w else
                    f"{mean_sd(a.best)[0] - mean_sd(b.best)[0]:+.4f} | — | — | —")
            lines.append(f"| {_esc(a.label)} | {_esc(b.label)} | {nums} | {_esc(text)} |")

    lines += ["", f"## modded-nanogpt Track 3 rules (target {t})", "",
              f"Record: (target − mean final val loss)·√n ≥ {TRACK3_DELTA:g}; earliest step: the first eval step "
              "(the same for every run) where the group's mean val loss passes that test. The 0.004 is 3.09 × an "
              "assumed per-run sd of 0.0013, Track 3's GPT-2 124M on FineWeb: meaningful only at that scale.", "",
              "| group | n | steps | mean final val loss | (target − mean)·√n | record | earliest passing step |",
              "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for g in groups:
        if not g.final:
            lines.append(f"| {_esc(g.label)} | {g.n} | {g.steps or '—'} | — | — | — | — |")
            continue
        m = mean_sd(g.final)[0]
        lhs, ok = track3_record(m, len(g.final), target)
        early = g.track3_earliest()
        lines.append(f"| {_esc(g.label)} | {len(g.final)} | {g.steps or '—'} | {m:.4f} | {lhs:+.5f} "
                     f"| {'passes' if ok else 'fails'} | {early[0] if early else '—'} |")
    if len(groups) > 1:
        lines += ["", f"Pairwise, {which}: ((loss_B − loss_A) + {slope:g}·(steps_B − steps_A)/100) / "
                      f"√(1/n_A + 1/n_B) ≥ {TRACK3_DELTA:g} means A is better (≤ −{TRACK3_DELTA:g}: B is); losses "
                      "are mean final val losses, steps the runs' step counts.", "",
                  "| A | B | left-hand side | verdict |", "| --- | --- | ---: | --- |"]
        for a, b in pair_list:
            lhs, text = track3_verdict(a, b, slope)
            lines.append(f"| {_esc(a.label)} | {_esc(b.label)} | {'—' if lhs is None else f'{lhs:+.5f}'} "
                         f"| {_esc(text)} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or a sweep directory")
    p.add_argument("--target", type=float, default=TRACK3_TARGET, help="target val loss (default: Track 3's 3.28)")
    p.add_argument("--pairs", choices=("best", "all"), default="best",
                   help="test each group against the best one (default) or every pair")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of Welch's t-test")
    p.add_argument("--loss-per-100-steps", type=float, default=TRACK3_LOSS_PER_100_STEPS,
                   help="Track 3's pairwise rule: the val loss 100 steps are worth (the README's 0.0045)")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    args = p.parse_args(argv)
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha {args.alpha:g} must be between 0 and 1, e.g. 0.05")
    text = report(load_groups(args.run_dirs, args.target), args.target, args.pairs, args.alpha,
                  args.loss_per_100_steps)
    print(text, end="")
    if args.out:
        if os.path.dirname(args.out):
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main_guard(main)
