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
# # The MNIST sweep: where in the grid does BN help?
#
# Fig. 1's network trained over a grid: {BN, no BN} x {sigmoid, ReLU} x learning rate x dropout
# x seeds (`make sweep-mnist`, `conf/experiment/sweep_mnist.yaml`). The paper claims BN allows
# higher learning rates and makes dropout less needed; the grid shows where that holds. Every
# number here comes from `bnrepro.experiments.sweep`'s functions (the same as `results/sweep_*`),
# reading the local run store (`RUNS`; any sweep folder works, one table per dataset).

# %%

from bnrepro.analysis.notebook import say, show, show_table
from bnrepro.experiments import sweep

# %% tags=["parameters"]
RUNS = "../runs/sweep_mnist"  # a folder of sweep runs (papermill: -p RUNS <folder>)

# %%
df, curves, configs = sweep.collect([RUNS])
if df.empty:
    raise FileNotFoundError(f"no runs under {RUNS}: train them with `make sweep-mnist`")
datasets = sweep.by_dataset(df, configs)  # refuses runs of different experiments
no_learn_below = sweep.CHANCE + sweep.CHANCE_MARGIN
for dataset, (runs, extra) in datasets.items():
    seeds = ", ".join(map(str, sorted(runs["seed"].unique())))
    say(f"**{dataset}**: {len(runs)} runs ({sweep.status_counts(runs)}); cells keyed by "
        f"{', '.join([*sweep.BASE_CELL, *extra])}; seeds {seeds}.")
say(f"Selection: {sweep.SELECTION_RULE}.")

# %% [markdown]
# ## The grid
#
# One panel per norm and activation: learning rate across, dropout up, coloured by mean final
# *validation* accuracy over completed seeds; each cell also gives the mean final *test*
# accuracy. Hatched cells had seeds diverge; the framed cell is the one chosen on validation.

# %%
tables = {}
for dataset, (runs, extra) in datasets.items():
    cell = [*sweep.BASE_CELL, *extra]
    cells = sweep.cell_table(runs, cell)
    best = sweep.best_cells(cells)
    tables[dataset] = cell, cells, best
    show(sweep.heatmap_figure(cells, best, extra, dataset, no_learn_below),
         f"heatmap_{dataset}")

# %% [markdown]
# ## The best cell of each norm and activation
#
# Chosen on validation (a seed that did not complete scores chance), reported on test:
# `test` is the chosen cell's mean final test accuracy over its completed seeds.

# %%
for dataset, (cell, _, best) in tables.items():
    show_table(best.rename(columns={"score": "select_val"}), f"best_{dataset}")
    show(sweep.best_curves_figure(datasets[dataset][0], best, curves, cell, dataset),
         f"best_curves_{dataset}")
    for activation, group in best.dropna(subset=["score"]).groupby("activation"):
        by_norm = group.set_index("norm")
        if {"bn", "none"} <= set(by_norm.index):
            bn, none = by_norm.loc["bn"], by_norm.loc["none"]
            say(f"{dataset}, {activation}: the best BN cell (lr {bn['lr']:g}, dropout "
                f"{bn['dropout']:g}) reaches mean final test accuracy {bn['test']:.4f}, the best "
                f"cell without BN (lr {none['lr']:g}, dropout {none['dropout']:g}) "
                f"{none['test']:.4f}.")

# %% [markdown]
# ## Fig. 1's claim at each net's best rate
#
# Fig. 1 runs both nets at lr 0.1; here each of Fig. 1's nets (sigmoid, no dropout) gets its
# own rate, chosen on validation, and the chosen cells' per-seed test accuracies are compared
# by the one rule (`bnrepro.claims.compare`; the same as `results/sweep_mnist_claims.md`).

# %%
for dataset, (cell, cells, _) in tables.items():
    for claim in sweep.best_rate_claims(datasets[dataset][0], cells, cell, dataset):
        say(f"{dataset}: **{claim['verdict']}**: {claim['claim']}. {claim['ours']}")
say(f"Rule: {sweep.BEST_RATE_RULE}")

# %% [markdown]
# ## Which learning rates train at all?
#
# Per norm and activation, the largest learning rate at which some cell trained: every seed
# completed (none diverged or failed) and its mean final validation accuracy is at least the
# "no learn" line (chance + margin).

# %%
for dataset, (_, cells, _) in tables.items():
    trained = cells[(cells["n"] == cells["runs"]) & (cells["val"] >= no_learn_below)]
    pairs = cells[["norm", "activation"]].drop_duplicates().sort_values(["norm", "activation"])
    largest = pairs.merge(trained.groupby(["norm", "activation"], as_index=False)["lr"].max(),
                          how="left").rename(columns={"lr": "largest_lr_that_trains"})
    show_table(largest, f"largest_lr_{dataset}", float_format="{:g}")
    say(f"{dataset}: no-learn line = validation accuracy {no_learn_below:g}; learning rates in "
        f"the grid: {', '.join(f'{x:g}' for x in sorted(cells['lr'].unique()))}. A dash: no "
        "learning rate of the grid trains.")
