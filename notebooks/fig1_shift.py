# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Figure 1: does BN speed up training and hold each layer's input distribution still?
#
# Ioffe & Szegedy's Fig. 1 trains the same fully connected sigmoid network on MNIST with and
# without Batch Normalization: (a) test accuracy over training, (b, c) the 15th, 50th and
# 85th percentiles of the input to one sigmoid of the last hidden layer. Their claim: with BN the
# network trains faster and the input distribution moves much less ("internal covariate
# shift" is reduced). This notebook reads the local run store only (`RUNS`: the runs of
# `make fig1`, or any folder of `experiment=fig1_mnist` runs), so it works offline.

# %%
from pathlib import Path

import pandas as pd

from bnrepro.analysis.notebook import say, show, show_table
from bnrepro.experiments import fig1, sweep
from bnrepro.run.runs import find_runs

# %% tags=["parameters"]
RUNS = "../runs/fig1_mnist"  # a folder of fig1_mnist runs (papermill: -p RUNS <folder>)

# %%
runs = [r for r in find_runs([RUNS]) if r.config.name == "fig1_mnist"]
if not runs:
    raise FileNotFoundError(f"no completed fig1_mnist runs under {Path(RUNS).resolve()}: train "
                            "them with `make fig1`, or set RUNS")
layers = len(runs[0].config.model.hidden)
# Selected on validation, reported on test: the test accuracy at the best validation step.
table = pd.DataFrame([{**r.summary["axes"], "status": r.summary["status"],
                       "steps": r.summary["steps_done"],
                       "best_val_acc": r.summary["best_val_acc"],
                       "best_val_step": r.summary["best_val_step"],
                       "test_acc_at_best_val": r.summary["test_acc_at_best_val"],
                       "final_test_acc": r.summary["final_test_acc"]} for r in runs])
show_table(table.sort_values(["norm", "seed"], ignore_index=True), "runs")

# %% [markdown]
# ## (a) accuracy, (b, c) the last hidden layer's tracked unit
#
# As in the paper: test accuracy (mean over seeds, band = min..max), and the percentiles of one
# unit's input for the lowest seed: solid, the network as it predicts (BN with population
# statistics) on fixed validation images; dashed, the training network on its mini-batches.

# %%
show(fig1.fig1_figure(runs), "fig1")
numbers = fig1.fig1_numbers(runs)
for norm, n in numbers.items():
    if norm in fig1.STYLE:
        say(f"**{fig1.STYLE[norm][0]}**: final test accuracy (step {n['final_step']}) "
            f"{n['final_test_acc_mean']:.4f}, mean over {n['seeds']} seed(s) "
            f"(min {n['final_test_acc_min']:.4f}, max {n['final_test_acc_max']:.4f}).")
if gap := numbers.get("bn_minus_none"):
    say(f"BN minus no BN, seed-mean test accuracy at each evaluation after step 0: from "
        f"{gap['min']:+.4f} to {gap['max']:+.4f}; BN is ahead at "
        f"{gap['fraction_of_evals_bn_ahead']:.0%} of them.")

# %% [markdown]
# ## The claims of Sec. 4.1, checked
#
# Each verdict is computed from the runs (`bnrepro.experiments.fig1`, the same as
# `results/fig1_mnist_claims.md`) by the rule below the table.

# %%
claims = pd.DataFrame(fig1.claims(runs, fig1.accuracy_table(runs)))
show_table(claims[["claim", "paper", "ours", "verdict"]], "claims")
say(f"Verdict rule: {fig1.VERDICT_RULE}")

# %% [markdown]
# ## Every hidden layer, not just the last
#
# The probes record the tracked unit of every layer (`act/h{i}/q15|q50|q85`) and the same
# percentiles pooled over all the layer's units (`act/h{i}/all_q..`, shaded): first for the
# inference network on validation images, then for the training network on its mini-batches
# (`act_train/`), where BN normalises each batch by its own statistics.

# %%
for prefix in fig1.NETWORKS:
    show(fig1.layers_figure(runs, prefix), f"layers_{prefix}")

# %% [markdown]
# ## How far does each layer's input move?
#
# One number per layer and run: for each of the tracked unit's percentiles, its largest minus
# its smallest value over training, averaged over the three percentiles (`drift_h{i}`, as
# `bnrepro.experiments.sweep` writes it for sweeps). Below: its mean over seeds.

# %%
drift = pd.DataFrame([{"norm": r.config.model.norm, "seed": r.config.seed,
                       **{f"drift_h{i}": sweep.drift(r.metrics, i)
                          for i in range(1, layers + 1)}} for r in runs])
drift = drift.groupby("norm").mean(numeric_only=True).drop(columns="seed")
show_table(drift, "drift")
if {"bn", "none"} <= set(drift.index):
    bn, none = drift.loc["bn"].mean(), drift.loc["none"].mean()
    say(f"Averaged over the {layers} layers, the tracked unit's percentiles move by {none:.3f} "
        f"without BN and {bn:.3f} with BN: {'less' if bn < none else 'more'} with BN.")

# %% [markdown]
# ## Distributional shift: Wasserstein-1 distance of each layer's input distribution
#
# Percentiles show three points of a distribution; the Wasserstein-1 distance compares whole
# distributions (`bnrepro.measures.shift`: per unit over the fixed probe examples, averaged over the
# layer's units). `shift/h{i}/w1_init` is the distance of hidden layer i's input from its
# distribution at step 0, `shift/h{i}/w1_prev` from the previous evaluation (how much it moves
# between two evaluations); `_rel` divides by the units' spread, so that layers of different
# scales compare. `shift_inference/` is the inference network on validation images, `shift/`
# the training network on its mini-batches (the network that trains). Lines: mean over seeds;
# bands: min..max.

# %%
shift = pd.concat([fig1.shift_table(runs, p) for p in fig1.SHIFT_NETWORKS],
                  ignore_index=True)
if shift.empty:
    say("These runs do not log the distributional-shift measures (`shift/h{i}/w1_init`, "
        "`shift/h{i}/w1_prev`): they were trained before the trainer recorded them. Retrain "
        "them (`make fig1`) to see this section.")
for prefix, network in fig1.SHIFT_NETWORKS.items():
    if (fig := fig1.shift_figure(runs, prefix)) is not None:
        show(fig, prefix)
    for measure in ("w1_prev", "w1_prev_rel"):
        rows = shift[(shift["network"] == prefix) & (shift["measure"] == measure)]
        moves = rows.groupby("norm")["mean_over_evaluations"].mean()
        if {"bn", "none"} <= set(moves.index):
            say(f"{network}: between two evaluations a layer's input distribution moves by "
                f"{measure} {moves['none']:.4f} without BN and {moves['bn']:.4f} with BN (mean "
                f"over evaluations, seeds and layers "
                f"{', '.join(map(str, sorted(set(rows['layer']))))}).")
if not shift.empty:
    show_table(shift, "shift")
