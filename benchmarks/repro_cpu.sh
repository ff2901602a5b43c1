#!/usr/bin/env bash
# The CPU-scale reproduction of the LionMuon paper's optimizer comparison (docs/results/README.md): the exact
# commands behind everything in docs/results/. Rerunnable: a finished run (its final.json exists) is skipped, an
# interrupted one resumes from its checkpoint (train.py), so rerun the same command after a crash or Ctrl-C.
#
#   bash benchmarks/repro_cpu.sh              # check + sweep + final + report (~1.5-2.5 h on 2 shared cores)
#   bash benchmarks/repro_cpu.sh check        # every recipe of configs/repro_cpu.toml loads and validates
#   bash benchmarks/repro_cpu.sh sweep [1-5]  # LR sweeps (all phases or one), 50 steps, seed 0: OUT/sweep_<method>*/
#   bash benchmarks/repro_cpu.sh final        # the 13 recipes x seeds 1, 2, 3, 100 steps: OUT/final/
#   bash benchmarks/repro_cpu.sh report       # docs/results/: tables, PNGs, the runs' metrics (no training); never
#                                             # replaces results with less: no runs = an error, nothing written
#   bash benchmarks/repro_cpu.sh pick         # each sweep's best LR next to the LR in its config (warns on mismatch)
#
# Environment: JOBS (runs at once, default 2: one per core), OUT (default runs/repro), PYTHON (default python3).
#
# The sweep has phases because later ones build on earlier results: every hybrid's backup AdamW (embeddings, norms)
# uses the tuned AdamW lr (phase 1); LionMuon P=2/P=5 and SignMuon P=2 sweep eta_M (phase 3) at the tuned Lion eta_L
# (phase 2, read from the lion recipe), then eta_L at their tuned eta_M (phase 4); NorMuon, AdEMAMix and SOAP (phase
# 5) came later and need only phase 1. The tuned values live in the recipes of configs/repro_cpu.toml, which is what
# the later phases read: after a fresh sweep, run `pick` and update the recipes before the next phase and `final`. Every run is `train.py configs/repro_cpu.toml --optimizer.name=<recipe>`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
JOBS=${JOBS:-2}
OUT=${OUT:-runs/repro}
SEEDS=(1 2 3)
CONFIG=configs/repro_cpu.toml
SWEEP_EXTRA=(--train.max_steps=50 --train.seed=0)  # sweeps: half the steps of the final runs, a seed of their own

# One thread per process: with 2 threads per run on 2 shared cores, OpenMP spin-waiting made runs ~2.5x slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Keep freed memory in the heap instead of returning it to the OS: the 2048x50304 logits (412 MB) are allocated and
# freed every step, and glibc's default mmap/munmap of such blocks costs page faults (~1.6x slower steps here).
export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_:-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-68719476736}

# method -> the LR grid of its sweep: 3 values a factor ~3 apart around the method's sensible tiny-model default,
# plus one more where the best of those 3 was at the edge of the grid (noted per line).
declare -A GRID=(
  [adamw]="optimizer.lr=1e-3,3e-3,1e-2"
  [lion]="optimizer.lion_lr=3e-5,1e-4,3e-4,1e-3"      # 3e-5 added: 1e-4 was the best of the first 3
  [signum]="optimizer.lion_lr=1e-4,3e-4,1e-3"
  [muon]="optimizer.lr=3e-3,1e-2,3e-2"
  [lionmuon_p1]="optimizer.lr=3e-3,1e-2,3e-2"
  [olion]="optimizer.lr=1e-3,3e-3,1e-2,3e-2"          # 3e-2 added: 1e-2 was the best of the first 3
  [leo]="optimizer.lr=1e-4,3e-4,1e-3,3e-3,1e-2"       # 3e-4, then 1e-4 added: the best was at the lower edge
  [lionmuon_p2]="optimizer.lr=3e-3,1e-2,3e-2"
  [lionmuon_p5]="optimizer.lr=3e-3,1e-2,3e-2,1e-1"    # 1e-1 added: 3e-2 was the best of the first 3
  [signmuon_p2]="optimizer.lr=3e-3,1e-2,3e-2"
  [normuon]="optimizer.lr=3e-3,1e-2,3e-2,1e-1"        # its spectral-norm scale moves 2-3x less than 0.2*sqrt(max)
  [ademamix]="optimizer.lr=1e-3,3e-3,1e-2"
  [soap]="optimizer.lr=1e-3,3e-3,1e-2,3e-2,1e-1"        # 3e-2, 1e-1 added: 1e-2 was the best of the first 3
)
# Extra overrides of one method's sweep: AdEMAMix's warm-ups span the whole run (epfml's 124M script sets them to
# the iteration count), so a 50-step sweep cell warms up over 50 steps.
declare -A SWEEP_EXTRA_M=(
  [ademamix]="--optimizer.alpha_warmup=50 --optimizer.beta3_warmup=50"
)
# Phase 4, the second LR of the methods that take both Muon and Lion steps: eta_L at the tuned eta_M (one step of
# coordinate descent). The paper fixes eta_L at Lion's tuned value; here that is 20x below the Muon steps' update RMS
# (0.2 * eta_M), so the Lion steps barely move the weights unless eta_L is tuned too.
declare -A GRID_ETA_L=(
  [lionmuon_p2]="optimizer.lion_lr=1e-4,3e-4,1e-3"
  [lionmuon_p5]="optimizer.lion_lr=1e-4,3e-4,1e-3"
  [signmuon_p2]="optimizer.lion_lr=1e-4,3e-4,1e-3"
)
PHASE1=(adamw)
PHASE2=(lion signum muon lionmuon_p1 olion leo)
PHASE3=(lionmuon_p2 lionmuon_p5 signmuon_p2)
PHASE4=(lionmuon_p2 lionmuon_p5 signmuon_p2)
PHASE5=(normuon ademamix soap)  # the stronger baselines, added later; they build on phase 1 only
METHODS=("${PHASE1[@]}" "${PHASE2[@]}" "${PHASE3[@]}" "${PHASE5[@]}")

# Every sweep as "method directory key" (for pick and report): OUT/sweep_<m> for GRID, OUT/sweep_<m>_eta_l for phase 4.
sweep_specs() {
  local m
  for m in "${METHODS[@]}"; do echo "$m $OUT/sweep_$m ${GRID[$m]%%=*}"; done
  for m in "${PHASE4[@]}"; do echo "$m $OUT/sweep_${m}_eta_l ${GRID_ETA_L[$m]%%=*}"; done
}

# Run the given shell commands, at most $JOBS at a time; exit non-zero if any failed.
run_parallel() {
  [ $# -gt 0 ] || return 0
  printf '%s\0' "$@" | xargs -0 -n 1 -P "$JOBS" bash -c
}

check() {
  $PY - "$CONFIG" "${METHODS[@]}" <<'PY'
import sys
from config import load_config
from errors import main_guard

def main():
    config, recipes = sys.argv[1], sys.argv[2:]
    for m in recipes:
        load_config(config, [f"--optimizer.name={m}"])  # validates the recipe against its optimizer
    print(f"check: the {len(recipes)} recipes of {config} load and validate")
main_guard(main)
PY
}

sweep_phase() {  # sweep_phase GRID|GRID_ETA_L METHOD...
  local -n grid=$1
  local suffix=$([ "$1" = GRID_ETA_L ] && echo _eta_l) cmds=() m name extra
  local phase3=$([ "$1" = GRID ] && echo " ${PHASE3[*]} ")
  shift
  for m in "$@"; do
    name=sweep_$m$suffix
    extra=
    # Phase 3 sweeps eta_M at eta_L = the tuned Lion eta_L (the paper's protocol), not at the config's eta_L, which
    # phase 4 has tuned since.
    [[ "$phase3" == *" $m "* ]] && extra="--optimizer.lion_lr=$($PY -c 'import sys
from config import load_config
print(load_config(sys.argv[1], ["--optimizer.name=lion"]).optimizer.settings["lion_lr"])' "$CONFIG")"
    cmds+=("$PY sweep.py $CONFIG --grid ${grid[$m]} --out $OUT/$name --launcher '$PY train.py' \
-- --optimizer.name=$m ${SWEEP_EXTRA[*]} ${SWEEP_EXTRA_M[$m]:-} $extra > $OUT/logs/$name.log 2>&1 && rm -f $OUT/$name/*/ckpt_* && echo '$name: done' \
|| { echo '$name: FAILED (see $OUT/logs/$name.log)'; exit 1; }")
  done
  run_parallel "${cmds[@]}"
}

sweep() {  # all five phases, or only the one given (1-5)
  mkdir -p "$OUT/logs"
  case "${1:-all}" in
    1) sweep_phase GRID "${PHASE1[@]}" ;;
    2) sweep_phase GRID "${PHASE2[@]}" ;;
    3) sweep_phase GRID "${PHASE3[@]}" ;;
    4) sweep_phase GRID_ETA_L "${PHASE4[@]}" ;;
    5) sweep_phase GRID "${PHASE5[@]}" ;;
    all) sweep_phase GRID "${PHASE1[@]}" && sweep_phase GRID "${PHASE2[@]}" && sweep_phase GRID "${PHASE3[@]}" \
           && sweep_phase GRID_ETA_L "${PHASE4[@]}" && sweep_phase GRID "${PHASE5[@]}" ;;
    *) echo "error: unknown sweep phase '$1'. Use 1, 2, 3, 4 or 5, or no phase for all five" >&2; exit 2 ;;
  esac
  pick
}

# Each sweep's best cell (lowest best val loss) next to the value in the config the final runs use.
pick() {
  sweep_specs | $PY -c '
import math, os, sys
from config import load_config
from plot import load_run

for line in sys.stdin:
    m, sweep, key = line.split()
    key = key.split(".")[1]
    cells = [load_run(os.path.join(sweep, c)) for c in sorted(os.listdir(sweep))
             if os.path.isfile(os.path.join(sweep, c, "final.json"))] if os.path.isdir(sweep) else []
    if not cells:
        print(f"{m:12s} {key:8s} no finished sweep cells in {sweep}")
        continue
    best = min(cells, key=lambda r: r.best_val_loss if math.isfinite(r.best_val_loss) else math.inf)
    chosen = load_config("configs/repro_cpu.toml", [f"--optimizer.name={m}"]).optimizer.settings[key]
    found = best.config["optimizer"][key]
    flag = "" if math.isclose(found, chosen) else "   <-- differs from the config: update it or explain why"
    print(f"{m:12s} {key:8s} best {found:g} (best val loss {best.best_val_loss:.4f}); config has {chosen:g}{flag}")
'
}

final() {
  mkdir -p "$OUT/final" "$OUT/logs"
  local cmds=() m s name dir
  for s in "${SEEDS[@]}"; do
    for m in "${METHODS[@]}"; do
      name=${m}_s$s
      dir=$OUT/final/$name
      [ -f "$dir/final.json" ] && continue
      # A checkpoint (87 MB) only serves to resume an interrupted run: drop it and its checksum once the run finished.
      cmds+=("$PY train.py $CONFIG --optimizer.name=$m --train.seed=$s --logging.run_dir=$dir --logging.run_name=$name \
> $OUT/logs/final_$name.log 2>&1 && rm -f $dir/ckpt_* && echo 'final $name: done' \
|| { echo 'final $name: FAILED (see $OUT/logs/final_$name.log)'; exit 1; }")
    done
  done
  local t0=$SECONDS
  run_parallel "${cmds[@]}"
  echo "final: ${#cmds[@]} runs in $(( SECONDS - t0 )) s wall with JOBS=$JOBS"
}

report() {
  $PY - "$OUT" $(sweep_specs | tr ' ' ':') <<'PY'
"""Everything under docs/results/ from the run directories: no training, no network."""
import json, math, os, shutil, sys
import numpy as np
import plot
from config import load_config

out, specs = sys.argv[1], [a.split(":") for a in sys.argv[2:]]  # (method, sweep dir, grid key) per sweep
methods = list(dict.fromkeys(m for m, _, _ in specs))
res = "docs/results"
SEEDS = (1, 2, 3)


def finished(d):
    return os.path.isfile(os.path.join(d, "final.json"))


def sweep_cells(d):
    return [os.path.join(d, c) for c in sorted(os.listdir(d)) if finished(os.path.join(d, c))] if os.path.isdir(d) else []


# A report never replaces results with less: with no runs at all it writes nothing; the sweep files are rewritten only
# when some sweep ran here, the final-run files only when some final run did (missing ones keep their committed data).
have_sweeps = any(sweep_cells(d) for _, d, _ in specs)
have_finals = any(finished(os.path.join(out, "final", f"{m}_s{s}")) for m in methods for s in SEEDS)
if not have_sweeps and not have_finals:
    sys.exit(f"error: no runs under {out} (no finished {out}/sweep_*/<cell>/ or {out}/final/<method>_s<seed>/), so "
             f"{res}/ is left as it is. Make them with `bash benchmarks/repro_cpu.sh sweep` and `bash "
             f"benchmarks/repro_cpu.sh final` (~3 h on 2 cores), or set OUT to the directory that holds them")
os.makedirs(res, exist_ok=True)
NAMES = {"adamw": "AdamW", "lion": "Lion", "signum": "Signum", "muon": "Muon", "signmuon_p2": "SignMuon P=2",
         "lionmuon_p1": "LionMuon P=1", "lionmuon_p2": "LionMuon P=2", "lionmuon_p5": "LionMuon P=5",
         "olion": "OLion", "leo": "Leo", "normuon": "NorMuon", "ademamix": "AdEMAMix", "soap": "SOAP"}
# The paper's 124M ordering in best val loss, best first (the issue).
PAPER = ["lionmuon_p2", "signmuon_p2", "muon", "adamw", "lion", "signum"]

def lr_text(m):
    o = load_config("configs/repro_cpu.toml", [f"--optimizer.name={m}"]).optimizer.settings
    if m in ("lion", "signum"):
        return f"ηL {o['lion_lr']:g}"
    if m == "lionmuon_p1":
        return f"ηM {o['lr']:g}"
    if "lion_lr" in o:
        return f"ηM {o['lr']:g}, ηL {o['lion_lr']:g}"
    return f"{o['lr']:g}"

# ---- the LR sweeps: one table and one figure -------------------------------------------------------------------
# A sweep whose run directories are not here (e.g. a fresh clone that reruns only some sweeps) keeps its committed
# row of lr_sweep.md, which the figure is redrawn from too: a report never replaces results with less.
import re
committed = {}
if os.path.isfile(os.path.join(res, "lr_sweep.md")):
    for line in open(os.path.join(res, "lr_sweep.md"), encoding="utf-8"):
        row = re.match(r"\| (.+?) \| `(\w+)`(.*?) \| (.+) \| ([^|]+) \|$", line.strip())
        if row and row.group(1) in NAMES.values():
            pts = [(float(v), float(l)) for v, l in re.findall(r"([0-9.e+-]+): \**([0-9.]+)", row.group(4))]
            committed[(row.group(1), row.group(2))] = (line.strip(), row.group(3), pts, float(row.group(5)))
sweep_rows, fig_data = [], []
for m, d, key in (specs if have_sweeps else []):
    key = key.split(".")[1]
    cells = [plot.load_run(c) for c in sweep_cells(d)]
    if not cells:
        if (NAMES[m], key) in committed:
            line, fixed, pts, chosen = committed[(NAMES[m], key)]
            sweep_rows.append(line)
            fig_data.append((f"{NAMES[m]}{fixed}", key, [v for v, _ in pts], [l for _, l in pts], chosen))
        continue
    cells.sort(key=lambda r: r.config["optimizer"][key])
    chosen = load_config("configs/repro_cpu.toml", [f"--optimizer.name={m}"]).optimizer.settings[key]
    ran = cells[0].config["optimizer"]  # the other LR of a two-LR method, as the sweep ran it
    fixed = f" (at ηM {ran['lr']:g})" if key == "lion_lr" and m not in ("lion", "signum") else (
        f" (at ηL {ran['lion_lr']:g})" if key == "lr" and ran.get("lion_lr") is not None and m != "lionmuon_p1" else "")
    best = min(r.best_val_loss for r in cells)
    cols = []
    for r in cells:
        s = f"{r.config['optimizer'][key]:g}: {plot.fmt_loss(r.best_val_loss)}"
        cols.append(f"**{s}**" if r.best_val_loss == best else s)
    sweep_rows.append(f"| {NAMES[m]} | `{key}`{fixed} | " + " · ".join(cols) + f" | {chosen:g} |")
    fig_data.append((f"{NAMES[m]}{fixed}", key, [r.config["optimizer"][key] for r in cells],
                     [r.best_val_loss for r in cells], chosen))
if have_sweeps:
    with open(os.path.join(res, "lr_sweep.md"), "w") as f:
        f.write("# LR sweeps (50 steps = 102,400 tokens, seed 0; best val loss per grid value)\n\n"
                "Bold = the sweep's best cell. `chosen` = the value in the recipe of configs/repro_cpu.toml used by "
                "the final runs.\n\n| method | swept key | value: best val loss | chosen |\n| --- | --- | --- | ---: |\n"
                + "\n".join(sweep_rows) + "\n")
else:
    print(f"report: no finished sweep cells under {out}; {res}/lr_sweep.md and lr_sweep.png are left as committed",
          file=sys.stderr)
if fig_data:
    plt = plot._pyplot()
    ncol = 5
    nrow = -(-len(fig_data) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.1 * nrow), squeeze=False)  # own y range each
    for ax, (title, key, xs, ys, chosen) in zip(axes.flat, fig_data):
        ax.plot(xs, ys, marker="o")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.axvline(chosen, color="red", linestyle=":", label=f"chosen {chosen:g}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(key)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("best val loss (50 steps)")
    for ax in list(axes.flat)[len(fig_data):]:
        ax.axis("off")
    fig.suptitle("LR sweeps: tiny GPT-2 on Shakespeare, 50 steps x 2048 tokens, seed 0")
    fig.tight_layout()
    fig.savefig(os.path.join(res, "lr_sweep.png"), dpi=100)
    plt.close(fig)

# ---- the final runs ---------------------------------------------------------------------------------------------
if not have_finals:
    print(f"report: no finished final runs under {out}/final; the final-run files of {res}/ are left as committed. "
          f"Make them with `bash benchmarks/repro_cpu.sh final`", file=sys.stderr)
    print(open(os.path.join(res, "lr_sweep.md")).read())
    sys.exit(0)
runs, by_method, kept = [], {}, []
for m in methods:
    for s in SEEDS:
        d = os.path.join(out, "final", f"{m}_s{s}")
        keep = os.path.join(res, "runs", f"{m}_s{s}")  # the raw numbers behind the PNGs (a few KB per run)
        if finished(d):
            os.makedirs(keep, exist_ok=True)
            for fn in ("metrics.jsonl", "final.json", "config.toml"):
                shutil.copyfile(os.path.join(d, fn), os.path.join(keep, fn))
        elif finished(keep):  # not rerun here: its committed copy stands in, so no method or seed drops out
            kept.append(f"{m}_s{s}")
        else:
            continue
        r = plot.load_run(keep)
        r.optimizer = NAMES[m]  # the label: the recipe's display name
        runs.append(r)
        by_method.setdefault(m, []).append(r)
if kept:
    print(f"report: {len(kept)} final run(s) not under {out}/final use their committed copy in {res}/runs/: "
          + ", ".join(kept), file=sys.stderr)
with open(os.path.join(res, "runs.md"), "w") as f:
    f.write("# Every final run (plot.py's table)\n\n" + plot.markdown_table(runs))

stats = {}
for m, rs in by_method.items():
    b = np.array([r.best_val_loss for r in rs])
    stats[m] = dict(n=len(b), mean=float(b.mean()), half_range=float(np.ptp(b) / 2) if len(b) > 1 else math.nan,
                    sd=float(np.std(b, ddof=1)) if len(b) > 1 else math.nan,
                    seeds=[float(x) for x in b], final=float(np.mean([r.final_val_loss for r in rs])),
                    flops=float(np.mean([r.total_flops for r in rs])),
                    opt_frac=float(np.mean([r.optimizer_flops / r.total_flops for r in rs])),
                    time=float(np.mean([r.elapsed_s for r in rs])), lr=lr_text(m))
order = sorted(stats, key=lambda m: stats[m]["mean"])

# ---- the two figures: one line / point per method (mean of the seeds), the seeds' range shaded / as error bars.
# (plot.py draws one line per run: `python plot.py docs/results/runs/*`; with 20 runs, per method reads better.)
plt = plot._pyplot()
COLORS = {"lionmuon_p1": "#08306b", "muon": "#2171b5", "olion": "#6baed6", "signmuon_p2": "#238b45",
          "lionmuon_p2": "#74c476", "lionmuon_p5": "#a1d99b", "lion": "#d94801", "signum": "#fd8d3c",
          "leo": "#fdae6b", "adamw": "#000000", "normuon": "#6a3d9a", "ademamix": "#e7298a", "soap": "#a6761d"}
NSEEDS = max(stats[m]["n"] for m in stats)
fig, ax = plt.subplots(figsize=(9, 5.2))
for m in order:
    rs = by_method[m]
    steps = sorted({e["step"] for e in rs[0].evals if e["step"] > 0})  # step 0 (loss 10.8, 0 FLOPs) is off the chart
    x = [np.mean([next(e["total_flops"] for e in r.evals if e["step"] == s) for r in rs]) for s in steps]
    y = np.array([[next(e["val_loss"] for e in r.evals if e["step"] == s) for s in steps] for r in rs])
    ax.plot(x, y.mean(0), marker="o", markersize=3, color=COLORS.get(m), label=f"{NAMES[m]}: {stats[m]['mean']:.3f}")
    ax.fill_between(x, y.min(0), y.max(0), color=COLORS.get(m), alpha=0.2, linewidth=0)
ax.set_xlabel("total training FLOPs (model + optimizer)")
ax.set_ylabel("validation loss")
ax.set_title(f"Tiny GPT-2 on Shakespeare, 100 steps x 2048 tokens: mean of {NSEEDS} seeds (band: min-max)",
             fontsize=10)
ax.grid(True, alpha=0.3)
ax.legend(title="best val loss (mean)", fontsize=8, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
fig.tight_layout()
fig.savefig(os.path.join(res, "val_loss_vs_flops.png"), dpi=120)
plt.close(fig)

fig, ax = plt.subplots(figsize=(9, 5.2))
pts = {m: (stats[m]["flops"], stats[m]["mean"]) for m in order}
for m in order:
    lo, hi = min(stats[m]["seeds"]), max(stats[m]["seeds"])
    fx, fy = pts[m]
    ax.errorbar([fx], [fy], yerr=[[fy - lo], [hi - fy]], marker="o", color=COLORS.get(m), capsize=3,
                label=NAMES[m])
    ax.annotate(NAMES[m], (fx, fy), textcoords="offset points", xytext=(6, -3), fontsize=8)
front = [list(pts)[i] for i in plot.pareto_front(list(pts.values()))]
ax.plot([pts[m][0] for m in front], [pts[m][1] for m in front], color="grey", linewidth=1, drawstyle="steps-post",
        zorder=0, label="Pareto frontier (means)")
ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v / 1e12:.2f}e12"))
ax.set_xlabel("total training FLOPs (model + optimizer); the spread is the optimizers' own FLOPs")
ax.set_ylabel(f"best validation loss (mean of {NSEEDS} seeds; bars: min-max)")
ax.set_title("Best val loss vs FLOPs, same 204,800 tokens for every method", fontsize=10)
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
fig.tight_layout()
fig.savefig(os.path.join(res, "val_loss_vs_flops_pareto.png"), dpi=120)
plt.close(fig)
lines = ["| rank | method | LR (tuned) | best val loss, mean ± sd | " + " | ".join(f"seed {s}" for s in SEEDS)
         + " | final val loss (mean) | total FLOPs | optimizer share | train time / run |",
         "| ---: | --- | --- | ---: | " + " | ".join("---:" for _ in SEEDS) + " | ---: | ---: | ---: | ---: |"]
for i, m in enumerate(order, 1):
    s = stats[m]
    seeds = [f"{x:.4f}" for x in s["seeds"]] + ["—"] * (len(SEEDS) - len(s["seeds"]))
    lines.append(f"| {i} | {NAMES[m]} | {s['lr']} | {s['mean']:.4f} ± {s['sd']:.4f} | {' | '.join(seeds)} "
                 f"| {s['final']:.4f} | {s['flops']:.3g} | {100 * s['opt_frac']:.2f} % | {s['time']:.0f} s |")

# The paper's ordering, pair by pair: the gap between neighbours vs the seed-to-seed noise. The per-method sd is the
# sample sd over its seeds; the gap's standard error is sqrt(sd1² / n1 + sd2² / n2) (Welch).
def compare(a, b):
    gap = stats[b]["mean"] - stats[a]["mean"]
    se = math.sqrt(stats[a]["sd"] ** 2 / stats[a]["n"] + stats[b]["sd"] ** 2 / stats[b]["n"])
    return gap, (gap / se if se > 0 else math.inf)


def verdict(gap, z):  # |gap| < 2 standard errors: the seeds cannot tell the pair apart (a crude test)
    return ("yes" if gap > 0 else "**no**") + (", clearly" if abs(z) >= 2 else ", within noise")


pairs = ["| paper says | gap (mean, 2nd − 1st) | holds here? | gap / its standard error | max seed sd |",
         "| --- | ---: | --- | ---: | ---: |"]
for a, b in zip(PAPER, PAPER[1:]):
    if a not in stats or b not in stats:
        continue
    gap, z = compare(a, b)
    pairs.append(f"| {NAMES[a]} < {NAMES[b]} | {gap:+.4f} | {verdict(gap, z)} | {z:+.1f} "
                 f"| {max(stats[a]['sd'], stats[b]['sd']):.4f} |")
# The stronger baselines against AdamW, Muon and the best method: is the difference beyond seed noise?
BASELINES = [m for m in ("normuon", "ademamix", "soap") if m in stats]
best = order[0]
strong = ["| baseline | rank | vs | gap (baseline − other) | beyond noise? | gap / its standard error |",
          "| --- | ---: | --- | ---: | --- | ---: |"]
for m in BASELINES:
    for other in dict.fromkeys(x for x in ("adamw", "muon", best) if x in stats and x != m):
        gap, z = compare(other, m)
        strong.append(f"| {NAMES[m]} | {order.index(m) + 1} | {NAMES[other]} | {gap:+.4f} "
                      f"| {'yes' if abs(z) >= 2 else 'no'} ({'worse' if gap > 0 else 'better'}) | {z:+.1f} |")
here = [m for m in order if m in PAPER]
noise = float(np.mean([stats[m]["sd"] for m in stats]))
with open(os.path.join(res, "summary.md"), "w") as f:
    f.write("# CPU-scale optimizer comparison: final runs\n\n"
            "Tiny GPT-2 (4 layers × 128, 7.24M params), context 128, 100 steps × 2048 tokens = 204,800 tokens of "
            f"Shakespeare, seeds {', '.join(map(str, SEEDS))} (init and data order), val = the first 16,384 val "
            "tokens. "
            f"Sorted by mean best val loss; ± is the sample standard deviation over the {NSEEDS} seeds.\n\n"
            + "\n".join(lines) + "\n\n"
            f"Mean seed sd over all methods: {noise:.4f}.\n\n"
            "## The paper's 124M ordering (LionMuon P=2 < SignMuon P=2 < Muon < AdamW < Lion < Signum)\n\n"
            f"Order here (best first): {' < '.join(NAMES[m] for m in here)}\n\n" + "\n".join(pairs) + "\n"
            + ("\n## The stronger baselines (NorMuon, AdEMAMix, SOAP)\n\n" + "\n".join(strong) + "\n"
               if BASELINES else ""))
with open(os.path.join(res, "results.json"), "w") as f:
    json.dump({NAMES[m]: stats[m] for m in order}, f, indent=1)
print(open(os.path.join(res, "summary.md")).read())
print(open(os.path.join(res, "lr_sweep.md")).read())
PY
}

main() {
  case "${1:-all}" in
    check) check ;;
    sweep) check && sweep "${2:-all}" ;;
    pick) pick ;;
    final) check && final ;;
    report) report ;;
    all) check && sweep && final && report ;;
    *) echo "error: unknown stage '$1'. Use one of: all, check, sweep, pick, final, report" >&2; exit 2 ;;
  esac
}
main "$@"; exit  # on one line, so that editing this file while it runs cannot change what it does
