"""Figure 1 of Ioffe & Szegedy (2015) from our run store.

(a) test accuracy vs training steps, with and without BN (mean over seeds, band = min..max);
(b, c) 15/50/85th percentiles of the input to one tracked sigmoid of the last hidden layer,
without and with BN, over training: solid, the network as it predicts (BN with Alg. 2
statistics) on fixed validation images; dashed, the training network (each mini-batch of 60
training images normalised by its own statistics). Writes results/fig1_mnist.{png,pdf} and a
JSON of the numbers quoted in the README.

    python scripts/plot_fig1.py runs/fig1_mnist [--out results]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bnrepro.atomic import atomic_save_figure, atomic_write_json  # noqa: E402
from bnrepro.runs import Run, find_runs  # noqa: E402

STYLE = {"none": ("Without BN", "tab:red"), "bn": ("With BN", "tab:blue")}
# probe key prefix -> (label, line style, colour of the 15/85th and of the 50th percentile)
NETWORKS = {"act": ("inference net, validation images", "-", "0.55", "0.0"),
            "act_train": ("training net, mini-batches of 60", "--", "tab:cyan", "tab:blue")}


def accuracy_table(runs: list[Run]) -> pd.DataFrame:
    """Test accuracy per (norm, step), one column per seed."""
    frames = [r.metrics[["step", "test/acc"]].assign(norm=r.config.model.norm, seed=r.config.seed)
              for r in runs]
    return pd.concat(frames).pivot_table(index=["norm", "step"], columns="seed",
                                         values="test/acc")


def last_layer_quantiles(run: Run, prefix: str = "act") -> tuple[pd.DataFrame, list[str]]:
    """The tracked unit's logged percentiles (q15, q50, q85) in the last hidden layer."""
    head = f"{prefix}/h{len(run.config.model.hidden)}/q"
    columns = sorted(c for c in run.metrics.columns
                     if c.startswith(head) and c[len(head):].isdigit())
    return run.metrics.set_index("step")[columns], columns


def plot(runs: list[Run], out_dir: Path) -> dict:
    acc = accuracy_table(runs)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    ax = axes[0]
    for norm in ("none", "bn"):
        if norm not in acc.index.get_level_values(0):
            continue
        label, color = STYLE[norm]
        table = acc.loc[norm]
        ax.plot(table.index, table.mean(axis=1), color=color,
                label=f"{label} ({table.shape[1]} seed{'s' * (table.shape[1] > 1)})")
        ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.2)
    ax.set(xlabel="training steps", ylabel="test accuracy", ylim=(0.7, 1.0),
           title="(a) MNIST test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")

    # (b, c): one typical unit, as in the paper: the tracked unit of seed 0's network.
    seed0 = {r.config.model.norm: r for r in sorted(runs, key=lambda r: r.config.seed)[::-1]}
    for ax, norm, letter in ((axes[1], "none", "b"), (axes[2], "bn", "c")):
        if norm not in seed0:
            ax.set_visible(False)
            continue
        run = seed0[norm]
        for prefix, (label, style, outer, middle) in NETWORKS.items():
            quantiles, columns = last_layer_quantiles(run, prefix)
            for col, shade in zip(columns, (outer, middle, outer), strict=False):
                ax.plot(quantiles.index, quantiles[col], color=shade, ls=style,
                        lw=1.2 if style == "-" else 0.9,
                        label=f"{label}" if col.endswith("q50") else None)
        ax.set(title=f"({letter}) {STYLE[norm][0]}: input to a sigmoid",
               xlabel="training steps", ylim=(-2.5, 2.5))
        ax.axhline(0, color="0.85", lw=0.8, zorder=0)
    axes[1].set_ylabel(f"last hidden layer, unit {runs[0].config.probe.unit} (seed 0)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    handles, labels = axes[2 if axes[2].get_visible() else 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.66, 0.0), ncols=2,
               fontsize=8, title="(b, c): 15th, 50th (dark) and 85th percentiles",
               title_fontsize=8, frameon=False)
    atomic_save_figure(fig, out_dir / "fig1_mnist")
    plt.close(fig)

    numbers = {}
    for norm in acc.index.get_level_values(0).unique():
        table = acc.loc[norm]
        numbers[norm] = {
            "seeds": int(table.shape[1]),
            "final_step": int(table.index.max()),
            "final_test_acc_mean": round(float(table.iloc[-1].mean()), 4),
            "final_test_acc_min": round(float(table.iloc[-1].min()), 4),
            "final_test_acc_max": round(float(table.iloc[-1].max()), 4),
            "test_acc_mean_at": {int(s): round(float(table.loc[s].mean()), 4)
                                 for s in (5000, 10000, 20000, 50000) if s in table.index},
        }
        numbers[norm]["tracked_unit_quantiles_seed0"] = {}
        for prefix in NETWORKS:
            q, columns = last_layer_quantiles(seed0[norm], prefix)
            numbers[norm]["tracked_unit_quantiles_seed0"][prefix] = {
                col: {name: round(float(value), 3) for name, value in
                      (("first", q[col].iloc[0]), ("last", q[col].iloc[-1]),
                       ("min", q[col].min()), ("max", q[col].max()))}
                for col in columns}
    if {"bn", "none"} <= numbers.keys():
        gap = (acc.loc["bn"].mean(axis=1) - acc.loc["none"].mean(axis=1)).drop(0, errors="ignore")
        numbers["bn_minus_none"] = {"min": round(float(gap.min()), 4),
                                    "max": round(float(gap.max()), 4),
                                    "fraction_of_evals_bn_ahead": round(float((gap > 0).mean()), 4)}
    atomic_write_json(out_dir / "fig1_mnist.json", numbers)
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run-store folders to search")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    runs = [r for r in find_runs(args.run_dirs) if r.config.name == "fig1_mnist"]
    if not runs:
        raise SystemExit(f"no completed fig1_mnist runs under {', '.join(map(str, args.run_dirs))}"
                         "; train them with `python -m bnrepro.train -m experiment=fig1_mnist`")
    numbers = plot(runs, args.out)
    print(f"wrote {args.out}/fig1_mnist.png, .pdf, .json from {len(runs)} runs")
    for norm in ("none", "bn"):
        if norm in numbers:
            n = numbers[norm]
            print(f"  {STYLE[norm][0]:<11} final test acc {n['final_test_acc_mean']:.4f} "
                  f"(min {n['final_test_acc_min']:.4f}, max {n['final_test_acc_max']:.4f})")


if __name__ == "__main__":
    main()
