"""plot.py's figures as a person sees them: what is drawn, where, in which colour, with which labels.

The runs are written like train.py writes them (the config line is config.to_dict of a real config), for several
recipes and seeds; the tests inspect the matplotlib Figures that plot.draw_curves / plot.draw_pareto return.
"""

import json
import math
import os

import pytest
from matplotlib.colors import to_rgba

import plot
from config import load_config, to_dict

EVAL_STEPS = (0, 5, 10, 15, 20)
MODEL_FLOPS_PER_STEP = 9.2e10  # the tiny model at 2048 tokens per step


def write_run(run_dir, overrides, losses, opt_flops_per_step, sec_per_step=2.0, finished=True):
    """A run directory as train.py leaves it: metrics.jsonl (config, train and eval records) and final.json."""
    os.makedirs(run_dir, exist_ok=True)
    cfg = to_dict(load_config("configs/tiny_cpu.toml", [*overrides, f"--logging.run_dir={run_dir}"],
                              full_check=False))
    recs = [{"kind": "config", "config": cfg, "time": 0.0}]
    per_step = MODEL_FLOPS_PER_STEP + opt_flops_per_step
    for step, loss in zip(EVAL_STEPS, losses):
        c = dict(tokens=2048 * step, model_flops=MODEL_FLOPS_PER_STEP * step,
                 optimizer_flops=opt_flops_per_step * step, total_flops=per_step * step, elapsed_s=sec_per_step * step)
        if step:
            recs.append(dict(kind="train", step=step - 1, loss=loss + 0.05, lr=1e-3, grad_norm=1.0,
                             tokens_per_s=1000.0, **c))
        recs.append(dict(kind="eval", step=step, val_loss=loss, **c))
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    if finished:
        last = recs[-1]
        with open(os.path.join(run_dir, "final.json"), "w") as f:
            json.dump(dict(steps=EVAL_STEPS[-1], best_val_loss=min(losses), final_val_loss=losses[-1],
                           **{k: last[k] for k in ("tokens", "model_flops", "optimizer_flops", "total_flops",
                                                   "elapsed_s")}), f)


def curve(start, end, noise=0.0):
    """A plausible val loss curve from step 0 (10.8) to `end`."""
    return [10.8] + [end + (start - end) * (1 - i / 4) ** 2 + noise for i in range(1, 5)]


# recipe label -> (overrides, [(seed, end loss)], optimizer FLOPs per step)
RECIPES = {
    "adamw": (["--optimizer.name=adamw"], [(1, 7.00), (2, 7.06), (3, 6.97)], 1.1e8),
    "muon": (["--optimizer.name=muon"], [(1, 6.40), (2, 6.44)], 2.6e9),
    "lionmuon period=2": (["--optimizer.name=lionmuon"], [(1, 6.55), (2, 6.50)], 1.3e9),
    "lionmuon period=5": (["--optimizer.name=lionmuon", "--optimizer.period=5"], [(1, 6.70)], 0.6e9),
    "lion": (["--optimizer.name=lion"], [(1, 7.20)], 1.0e8),
}


@pytest.fixture
def runs(tmp_path):
    for label, (overrides, seeds, opt_flops) in RECIPES.items():
        for seed, end in seeds:
            name = label.replace(" ", "_").replace("=", "")
            write_run(tmp_path / f"{name}_s{seed}", [*overrides, f"--train.seed={seed}"],
                      curve(9.0, end, noise=0.01 * seed), opt_flops)
    return plot.load_runs([str(tmp_path)])


def recipe_artists(ax, prefix="recipe:"):
    """{recipe label: artist} for the artists plot.py tags with gid "recipe:<label>" (or another prefix)."""
    out = {}
    for a in [*ax.lines, *ax.collections]:
        gid = a.get_gid() or ""
        if gid.startswith(prefix):
            out[gid[len(prefix):]] = a
    return out


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def visible_tick_labels(ax, which):
    """The tick labels a person sees on an axis: drawn, inside the view, non-empty; each must say its tick's value."""
    ax.figure.canvas.draw()
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(axis.get_view_interval())
    shown = [(t.get_text(), loc) for t, loc in zip(axis.get_ticklabels(), axis.get_ticklocs())
             if lo <= loc <= hi and t.get_visible() and t.get_text()]
    for text, loc in shown:
        assert float(text.replace("\u2212", "-")) == pytest.approx(loc, rel=1e-6, abs=1e-9), (which, text, loc)
    return [text for text, _ in shown]


def data_rows(markdown):
    """The cells of a markdown table's data rows (not the header or the |---| line)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.splitlines()
            if line.startswith("| ") and not line.startswith(("| #", "| ---"))]


def test_recipes_pool_seeds_and_keep_periods_apart(runs):
    recipes = plot.group_recipes(runs)
    assert {r.label: r.n for r in recipes} == {label: len(v[1]) for label, v in RECIPES.items()}
    assert [r.label for r in recipes][:2] == ["muon", "lionmuon period=2"]  # ranked by mean best val loss
    adamw = next(r for r in recipes if r.label == "adamw")
    mean, sd = adamw.stat("best_val_loss")
    ends = [e + 0.01 * s for s, e in RECIPES["adamw"][1]]
    m = sum(ends) / 3
    assert mean == pytest.approx(m) and sd == pytest.approx(math.sqrt(sum((e - m) ** 2 for e in ends) / 2))


def test_curves_one_line_per_recipe_with_bands_for_seeds(runs):
    ax = plot.draw_curves(runs, "flops").axes[0]
    lines = recipe_artists(ax)
    assert sorted(lines) == sorted(RECIPES)
    assert all(len(line.get_xdata()) == len(EVAL_STEPS) for line in lines.values())
    bands = recipe_artists(ax, "band:")
    assert sorted(bands) == ["adamw", "lionmuon period=2", "muon"]  # the recipes with n > 1, and only those
    # adamw's band at the last eval spans mean ± std of the three seeds' last losses
    ends = [e + 0.01 * s for s, e in RECIPES["adamw"][1]]
    m = sum(ends) / 3
    sd = math.sqrt(sum((e - m) ** 2 for e in ends) / 2)
    last_x = lines["adamw"].get_xdata()[-1]
    verts = bands["adamw"].get_paths()[0].vertices
    at_end = [y for x, y in verts if math.isclose(x, last_x)]
    assert min(at_end) == pytest.approx(m - sd) and max(at_end) == pytest.approx(m + sd)
    assert lines["adamw"].get_ydata()[-1] == pytest.approx(m)
    texts = legend_texts(ax)
    assert len(texts) == len(RECIPES)
    assert texts[0].startswith("1. muon (n=2): best ") and " ± " in texts[0]
    assert any(t.startswith("5. lion (n=1): best 7.2100") and "±" not in t for t in texts)
    assert "band ±1 std" in ax.get_title()


def test_step0_point_is_inside_the_visible_flops_axis(runs):
    fig = plot.draw_curves(runs, "flops")
    ax = fig.axes[0]
    fig.canvas.draw()
    box = ax.get_window_extent()
    for label, line in recipe_artists(ax).items():
        x0, y0 = line.get_xdata()[0], line.get_ydata()[0]
        assert x0 == 0 and y0 == pytest.approx(10.8), label
        px, py = ax.transData.transform((x0, y0))
        assert box.x0 + 3 <= px <= box.x1 - 3 and box.y0 + 3 <= py <= box.y1 - 3, label  # the whole marker shows
    assert "0" in visible_tick_labels(ax, "x")
    assert "step 0" in ax.get_xlabel()


@pytest.mark.parametrize("x", ["tokens", "time"])
def test_step0_point_on_linear_axes(runs, x):
    fig = plot.draw_curves(runs, x)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    for line in recipe_artists(ax).values():
        assert line.get_xdata()[0] == 0 and lo < 0 < hi


def test_same_recipe_same_colour_in_both_figures_and_distinct_within(runs):
    curves = recipe_artists(plot.draw_curves(runs, "flops").axes[0])
    pareto = recipe_artists(plot.draw_pareto(runs).axes[0])
    assert sorted(curves) == sorted(pareto) == sorted(RECIPES)
    for label in RECIPES:
        assert to_rgba(curves[label].get_color()) == to_rgba(pareto[label].get_color()), label
        assert curves[label].get_marker() == pareto[label].get_marker(), label
    colours = [to_rgba(a.get_color()) for a in curves.values()]
    assert len(set(colours)) == len(colours)  # LionMuon P=2 and P=5 included
    # ... and whatever else is in the figure set, a recipe's colour comes from its name: adamw is black both here
    # and when plotted alone.
    alone = recipe_artists(plot.draw_curves([r for r in runs if r.optimizer == "adamw"], "flops").axes[0])
    assert to_rgba(alone["adamw"].get_color()) == to_rgba(curves["adamw"].get_color()) == to_rgba("black")


def test_styles_stay_distinct_past_the_palette(tmp_path):
    for i in range(len(plot.PALETTE) + 5):  # an LR sweep: one recipe per lr, all named adamw
        write_run(tmp_path / f"lr{i}", ["--optimizer.name=adamw", f"--optimizer.lr={1e-4 * (i + 1):g}"],
                  curve(9.0, 7.0 + i / 100), 1e8)
    runs = plot.load_runs([str(tmp_path)])
    recipes = plot.group_recipes(runs)
    assert len(recipes) == len(plot.PALETTE) + 5 and all(r.label.startswith("adamw lr=") for r in recipes)
    styles = plot.recipe_styles(recipes)
    assert len(set(styles.values())) == len(recipes)
    assert plot.recipe_styles(list(reversed(recipes))) == styles  # the order runs are given in does not matter
    ax = plot.draw_curves(runs, "flops").axes[0]
    drawn = {(to_rgba(a.get_color()), a.get_linestyle(), a.get_marker()) for a in recipe_artists(ax).values()}
    assert len(drawn) == len(recipes)


def test_pareto_points_labels_and_legend(runs):
    fig = plot.draw_pareto(runs)
    ax = fig.axes[0]
    points = recipe_artists(ax)
    assert sorted(points) == sorted(RECIPES)
    assert all(len(p.get_xdata()) == 1 for p in points.values())  # one point per recipe
    seeds = recipe_artists(ax, "runs:")
    assert {k: len(v.get_xdata()) for k, v in seeds.items()} == {"adamw": 3, "muon": 2, "lionmuon period=2": 2}
    texts = legend_texts(ax)
    assert texts[0] == "Pareto frontier (recipe means)"
    assert sorted(t.split(". ", 1)[1].split(" (n=")[0] for t in texts[1:]) == sorted(RECIPES)
    assert not ax.texts  # no annotations to collide: the legend names the points
    fig.canvas.draw()
    legend_box = ax.get_legend().get_window_extent()
    assert not legend_box.overlaps(ax.get_window_extent())  # the legend hides no point
    lo, hi = ax.get_xlim()
    assert all(lo < p.get_xdata()[0] < hi for p in points.values())
    lo, hi = ax.get_ylim()
    assert all(lo < y < hi for s in seeds.values() for y in s.get_ydata())


def test_pareto_points_of_equal_flops_do_not_hide_one_another(tmp_path):
    # Three recipes with the same FLOPs and almost the same loss: their markers would coincide.
    for name, end in [("adamw", 3.300), ("lion", 3.301), ("signum", 3.302)]:
        write_run(tmp_path / name, [f"--optimizer.name={name}"], [10.8, 4.0, 3.6, 3.4, end], 1e8)
    write_run(tmp_path / "muon", ["--optimizer.name=muon"], [10.8, 4.0, 3.6, 3.4, 3.2], 3e9)
    fig = plot.draw_pareto(plot.load_runs([str(tmp_path)]))
    ax = fig.axes[0]
    fig.canvas.draw()
    pix = [ax.transData.transform((p.get_xdata()[0], p.get_ydata()[0])) for p in recipe_artists(ax).values()]
    assert len(pix) == 4
    assert min(math.dist(a, b) for i, a in enumerate(pix) for b in pix[i + 1:]) >= 6  # a marker is 7 pt wide
    assert "side by side" in ax.get_xlabel()  # and the axis says that equal FLOPs are spread out


def test_unfinished_recipe_is_hollow_on_the_pareto_plot(tmp_path):
    write_run(tmp_path / "done", ["--optimizer.name=adamw"], curve(9.0, 7.0), 1e8)
    write_run(tmp_path / "half", ["--optimizer.name=muon"], curve(9.0, 6.5)[:3], 2e9, finished=False)
    ax = plot.draw_pareto(plot.load_runs([str(tmp_path)])).axes[0]
    points = recipe_artists(ax)
    assert to_rgba(points["muon"].get_markerfacecolor()) == to_rgba("white")
    assert to_rgba(points["adamw"].get_markerfacecolor()) == to_rgba(points["adamw"].get_color())
    assert any(t.startswith("2. muon (n=1, 1 unfinished)") for t in legend_texts(ax))


@pytest.mark.parametrize("ends", [(3.31, 3.28, 3.295), (3.2862, 3.2841, 3.2850)])
def test_ticks_readable_on_narrow_ranges(tmp_path, ends):
    # best losses 3.28-3.31 (or within 0.003) and total FLOPs within a few percent: the cases where matplotlib's
    # defaults print an offset ("+3.284") or no FLOPs tick label at all
    for i, (name, end) in enumerate(zip(("adamw", "muon", "lion"), ends)):
        write_run(tmp_path / name, [f"--optimizer.name={name}"], [10.8, 4.0, 3.6, 3.4, end], 1e8 + 2e9 * i)
    runs = plot.load_runs([str(tmp_path)])
    for fig in (plot.draw_pareto(runs), plot.draw_curves(runs, "flops")):
        ax = fig.axes[0]
        for which in ("x", "y"):
            labels = visible_tick_labels(ax, which)
            assert len(labels) >= 3 and len(set(labels)) == len(labels), (which, labels)
        assert ax.yaxis.get_offset_text().get_text() == "" and ax.xaxis.get_offset_text().get_text() == ""
    ax = plot.draw_pareto(runs).axes[0]
    ys = [float(t) for t in visible_tick_labels(ax, "y")]
    assert min(ys) <= min(ends) + 0.001 and max(ys) >= max(ends) - 0.001  # the labels are the plain losses


def test_tables_show_mean_std_per_recipe_and_every_run(runs):
    text = plot.tables(runs)
    assert text.startswith("Per recipe")
    recipe_part, run_part = text.split("Per run:")
    rows = data_rows(recipe_part)
    assert [r[1] for r in rows] == [r.label for r in plot.group_recipes(runs)]
    adamw = next(r for r in rows if r[1] == "adamw")
    rec = next(r for r in plot.group_recipes(runs) if r.label == "adamw")
    mean, sd = rec.stat("best_val_loss")
    assert adamw[2] == "3" and adamw[3] == f"{mean:.4f} ± {sd:.4f}"
    lion = next(r for r in rows if r[1] == "lion")
    assert lion[2] == "1" and "±" not in lion[3]
    run_rows = data_rows(run_part)
    assert len(run_rows) == len(runs) == 9
    one_each = [r for r in runs if r.config["train"]["seed"] == 1]
    assert not plot.tables(one_each).startswith("Per recipe")  # one run per recipe: the per-run table alone


def test_main_writes_the_pngs(runs, tmp_path, capsys):
    out = tmp_path / "figs" / "loss.png"
    plot.main([*{os.path.dirname(r.dir) for r in runs}, "--out", str(out)])
    for path in (out, tmp_path / "figs" / "loss_pareto.png"):
        import matplotlib.image

        img = matplotlib.image.imread(path)
        assert img.shape[0] > 400 and img.shape[1] > 800
    assert capsys.readouterr().out.startswith("Per recipe")
