"""Aggregate a hyper-parameter sweep: one CSV row per run, accuracy heatmaps, best-cell curves.

    python scripts/aggregate.py runs/sweep [more dirs] [--out results] [--thresholds 0.9 0.95]

Every run dir below the given folders is read, whatever its status (completed, diverged,
failed, ...); one whose files are missing or unreadable is named in a warning and skipped.
For each dataset D it writes <out>/sweep_D.csv, sweep_D_heatmap.{png,pdf} and
sweep_D_best_curves.{png,pdf} (`--name` replaces the stem `sweep_D`).
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from bnrepro.atomic import atomic_save_figure, atomic_write  # noqa: E402
from bnrepro.store import read_metrics, read_summary  # noqa: E402

AXES = ["dataset", "norm", "activation", "lr", "dropout", "seed"]
SUMMARY_KEYS = ["status", "steps_done", "diverged_at_step", "final_test_acc", "best_test_acc",
                "best_step", "final_train_loss"]
CELL = ["norm", "activation", "lr", "dropout"]
NUM_CLASSES = 10  # mnist, cifar10 and cifar10-jpeg: chance accuracy is 1/10
UNIT_QUANTILE = re.compile(r"act/h(\d+)/q\d+$")  # the tracked unit's quantiles, not all_q*


def steps_to_threshold(metrics: pd.DataFrame, threshold: float) -> int | None:
    """First evaluated step whose test accuracy is >= threshold; None if it never gets there."""
    if metrics.empty or "test/acc" not in metrics:
        return None
    hits = metrics.loc[metrics["test/acc"] >= threshold, "step"]
    return int(hits.min()) if len(hits) else None


def quantile_columns(metrics: pd.DataFrame) -> dict[int, list[str]]:
    """Hidden layer (1-based) -> the tracked unit's logged quantile columns (q15, q50, q85)."""
    layers: dict[int, list[str]] = {}
    for column in metrics.columns:
        if match := UNIT_QUANTILE.fullmatch(column):
            layers.setdefault(int(match[1]), []).append(column)
    return dict(sorted(layers.items()))


def drift(metrics: pd.DataFrame, layer: int) -> float:
    """How much the input distribution of layer `layer`'s tracked unit moved during training:
    the mean over its logged quantiles of (max - min over evaluations). NaN if not logged."""
    columns = quantile_columns(metrics).get(layer)
    if not columns:
        return float("nan")
    values = metrics[columns].astype(float)
    return float((values.max() - values.min()).mean())


def read_run(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    """summary.json and metrics.jsonl of one run; raises OSError/ValueError/KeyError if bad."""
    summary = read_summary(run_dir)
    if not isinstance(summary, dict) or not isinstance(summary.get("axes"), dict):
        raise ValueError("summary.json holds no run summary")
    if not (run_dir / "metrics.jsonl").is_file():  # read_metrics would return [] silently
        raise FileNotFoundError("no metrics.jsonl")
    # One row per step, in order: a resumed run's store drops rows past its checkpoint.
    return summary, pd.DataFrame(read_metrics(run_dir))


def collect(roots: Iterable[str | Path], thresholds: Iterable[float] = (0.9, 0.95, 0.97)
            ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per run dir below `roots` (every status), and each run's metrics by run_dir."""
    thresholds = list(thresholds)
    rows, curves, skipped = [], {}, []
    for root in roots:
        for summary_file in sorted(Path(root).rglob("summary.json")):
            run_dir = summary_file.parent
            try:
                summary, metrics = read_run(run_dir)
                row = {k: summary["axes"][k] for k in AXES} | {k: summary[k] for k in SUMMARY_KEYS}
            except (OSError, ValueError, KeyError) as err:
                skipped.append(f"{run_dir} ({type(err).__name__}: {err})")
                continue
            row |= {f"steps_to_acc_{t:g}": steps_to_threshold(metrics, t) for t in thresholds}
            row |= {f"drift_h{i}": drift(metrics, i) for i in quantile_columns(metrics)}
            rows.append(row | {"run_dir": str(run_dir)})
            curves[str(run_dir)] = metrics
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable run(s): " + "; ".join(skipped),
                      stacklevel=2)
    drifts = sorted({c for r in rows for c in r if c.startswith("drift_h")},
                    key=lambda c: int(c[len("drift_h"):]))
    columns = [*AXES, *SUMMARY_KEYS, *(f"steps_to_acc_{t:g}" for t in thresholds), *drifts,
               "run_dir"]
    df = pd.DataFrame(rows, columns=columns)
    integers = ["seed", "steps_done", "diverged_at_step", "best_step",
                *(c for c in columns if c.startswith("steps_to_acc_"))]
    floats = ["lr", "dropout", "final_test_acc", "best_test_acc", "final_train_loss", *drifts]
    return df.astype({c: "Int64" for c in integers} | {c: float for c in floats}), curves


def cell_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (norm, activation, lr, dropout): mean final test accuracy over completed seeds (acc),
    completed seeds (n), diverged runs (diverged) and all runs (runs)."""
    done, div = df["status"] == "completed", df["status"] == "diverged"
    table = df.assign(acc=df["final_test_acc"].where(done), done=done, div=div).groupby(CELL)
    return table.agg(acc=("acc", "mean"), n=("done", "sum"), diverged=("div", "sum"),
                     runs=("status", "size")).reset_index()


def save(fig: plt.Figure, stem: Path) -> list[Path]:
    paths = atomic_save_figure(fig, stem)
    plt.close(fig)
    return paths


def plot_heatmap(cells: pd.DataFrame, dataset: str, no_learn_below: float, stem: Path
                 ) -> list[Path]:
    norms, acts = sorted(cells["norm"].unique()), sorted(cells["activation"].unique())
    lrs, dropouts = sorted(cells["lr"].unique()), sorted(cells["dropout"].unique())
    full_n, acc = cells["n"].max(), cells["acc"].dropna()
    low, high = (acc.min(), acc.max()) if len(acc) else (0.0, 1.0)
    scale = Normalize(min(low, high - 0.01), high)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # white: no completed seed
    fig, axes = plt.subplots(len(norms), len(acts), squeeze=False, layout="constrained",
                             figsize=(len(acts) * (1.0 * len(lrs) + 1.2) + 1.2,
                                      len(norms) * (0.75 * len(dropouts) + 1.1) + 0.5))
    for (r, norm), (c, act) in ((a, b) for a in enumerate(norms) for b in enumerate(acts)):
        ax, panel = axes[r, c], cells[(cells["norm"] == norm) & (cells["activation"] == act)]
        grid = panel.pivot(index="dropout", columns="lr", values="acc")
        ax.imshow(grid.reindex(index=dropouts, columns=lrs).to_numpy(float), cmap=cmap,
                  norm=scale, origin="lower", aspect="auto")
        for cell in panel.itertuples():
            i, j = dropouts.index(cell.dropout), lrs.index(cell.lr)
            lines = [f"{cell.acc:.3f}"] if cell.n else [] if cell.diverged else ["no result"]
            if 0 < cell.n < full_n:
                lines.append(f"n={cell.n}")
            if cell.n and cell.acc < no_learn_below:
                lines.append("no learn")
            if cell.diverged:
                lines.append(f"div {cell.diverged}/{cell.runs}")
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                       edgecolor="red", lw=1.5))
            rgb = cmap(scale(cell.acc))[:3] if cell.n else (1, 1, 1)
            dark = cell.n and np.dot(rgb, (0.299, 0.587, 0.114)) < 0.5
            box = {"boxstyle": "round,pad=0.2", "fc": "white", "alpha": 0.8, "lw": 0}
            ax.text(j, i, "\n".join(lines), ha="center", va="center", fontsize=7.5,
                    color="white" if dark and not cell.diverged else "black",
                    fontweight="bold" if cell.diverged else "normal",
                    bbox=box if cell.diverged else None)
        ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set_yticks(range(len(dropouts)), [f"{d:g}" for d in dropouts])
        ax.set_title(f"norm={norm}, {act}", fontsize=10)
        if r == len(norms) - 1:
            ax.set_xlabel("learning rate")
        if c == 0:
            ax.set_ylabel("dropout")
    fig.colorbar(ScalarMappable(scale, cmap), ax=axes, label="mean final test accuracy")
    fig.suptitle(f"{dataset}: final test accuracy, mean over completed seeds\n"
                 f"hatched, div k/n: k of n seeds diverged; no learn: mean < {no_learn_below:g}",
                 fontsize=10)
    return save(fig, stem)


def best_cells(df: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per (norm, activation): the (lr, dropout) with the best mean final test accuracy, and
    how many runs of that (norm, activation) diverged anywhere in the sweep."""
    best = cells.dropna(subset=["acc"]).sort_values("acc", ascending=False)
    best = best.groupby(["norm", "activation"]).head(1).set_index(["norm", "activation"])
    diverged = df.assign(div=df["status"] == "diverged").groupby(["norm", "activation"])["div"]
    table = best[["lr", "dropout", "acc", "n"]].reindex(diverged.sum().index)
    return table.assign(diverged_runs=diverged.sum(), runs=diverged.size()).reset_index()


def plot_best_curves(df: pd.DataFrame, best: pd.DataFrame, curves: dict[str, pd.DataFrame],
                     dataset: str, stem: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    for k, cell in enumerate(best.dropna(subset=["acc"]).itertuples()):
        match = (df["status"] == "completed") & (df[CELL] == [getattr(cell, c) for c in CELL]
                                                  ).all(axis=1)
        runs = df[match]
        acc = pd.concat([curves[d].set_index("step")["test/acc"] for d in runs["run_dir"]], axis=1)
        color = plt.get_cmap("tab10")(k)
        ax.plot(acc.index, acc.mean(axis=1), color=color,
                label=f"{cell.norm}, {cell.activation}: lr={cell.lr:g}, dropout={cell.dropout:g}"
                      f" ({acc.shape[1]} seed{'s' * (acc.shape[1] > 1)})")
        ax.fill_between(acc.index, acc.min(axis=1), acc.max(axis=1), color=color, alpha=0.2)
    ax.set(xlabel="training steps", ylabel="test accuracy",
           title=f"{dataset}: best (lr, dropout) per norm and activation (band = min..max)")
    ax.grid(alpha=0.3)
    if ax.lines:
        fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no completed runs", transform=ax.transAxes, ha="center")
    return save(fig, stem)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="folders to search for runs")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.9, 0.95, 0.97])
    parser.add_argument("--name", help="file stem instead of sweep_<dataset>")
    parser.add_argument("--chance-margin", type=float, default=0.1,
                        help=f"'no learn' = mean acc below 1/{NUM_CLASSES} + this (default 0.1)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.sweep_dirs if not d.is_dir()]
    if missing:
        raise SystemExit(f"no such folder: {', '.join(missing)}")
    df, curves = collect(args.sweep_dirs, args.thresholds)
    if df.empty:
        raise SystemExit(f"no runs under {', '.join(map(str, args.sweep_dirs))}")
    datasets = sorted(df["dataset"].unique())
    for dataset in datasets:
        stem = args.name or f"sweep_{dataset}"
        if args.name and len(datasets) > 1:
            stem = f"{args.name}_{dataset}"
        runs = df[df["dataset"] == dataset].sort_values(["norm", "activation", "lr", "dropout",
                                                         "seed"], ignore_index=True)
        csv = args.out / f"{stem}.csv"
        atomic_write(csv, lambda tmp, runs=runs: runs.to_csv(tmp, index=False))
        cells, paths = cell_table(runs), [csv]
        best = best_cells(runs, cells)
        paths += plot_heatmap(cells, dataset, 1 / NUM_CLASSES + args.chance_margin,
                              args.out / f"{stem}_heatmap")
        paths += plot_best_curves(runs, best, curves, dataset, args.out / f"{stem}_best_curves")
        counts = runs["status"].value_counts().to_dict()
        print(f"{dataset}: {len(runs)} runs ({', '.join(f'{n} {s}' for s, n in counts.items())})")
        print(best.rename(columns={"acc": "mean_final_acc", "n": "seeds"}).to_string(
            index=False, float_format=lambda x: f"{x:.4g}", na_rep="-"))
        print("wrote " + ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
