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
# # Beyond BN: batch size and residual depth
#
# Two things about BN that the original paper does not show, checked on our runs:
#
# 1. **Batch size** (Wu & He 2018, Fig. 1; Batch Renorm, Ioffe 2017): BN normalises with the
#    statistics of the mini-batch, so with few examples per batch its statistics are noisy and
#    its error rises; Group and Layer Norm do not look across the batch and should not care.
#    BN's train/inference discrepancy (batch statistics in training, fixed ones at test time)
#    grows as the batch shrinks. `make batchsize`.
# 2. **Residual depth** (De & Smith 2020): in a residual net BN divides each branch by the
#    spread of the growing skip path, so block l's branch contributes ~1/l of its output: BN
#    biases deep residual blocks towards the identity, and a learnable scalar initialised to 0
#    on each branch (SkipInit) trains deep nets without any normalisation. `make depth`.
#
# This notebook reads the local run store only; every verdict is computed by the plot
# scripts' rules from the runs.

# %%
import tempfile
from pathlib import Path

import pandas as pd

from bnrepro.analysis.notebook import load_script, say, show, show_table

plot_batchsize = load_script("plot_batchsize")
plot_depth = load_script("plot_depth")

# %% tags=["parameters"]
BATCHSIZE_RUNS = "auto"  # comma-separated batchsize run stores; auto: `make batchsize`'s; "": skip
DEPTH_RUNS = "auto"  # a depth_cifar run store; auto: ../runs/depth_cifar10[-jpeg]; "": skip

# %%
NOT_CIFAR = {"cifar10-jpeg": " (CIFAR-10's images after JPEG recompression, the offline "
                             "mirror: **not CIFAR-10 numbers**)"}
if BATCHSIZE_RUNS == "auto":
    BATCHSIZE_RUNS = ",".join(f for f in ("../runs/batchsize_mnist", "../runs/batchsize_cifar10",
                                          "../runs/batchsize_cifar10-jpeg") if Path(f).is_dir())
if DEPTH_RUNS == "auto":
    DEPTH_RUNS = next((f for f in ("../runs/depth_cifar10", "../runs/depth_cifar10-jpeg")
                       if Path(f).is_dir()), "")
say(f"Batch-size runs: `{BATCHSIZE_RUNS or 'none'}`; depth runs: `{DEPTH_RUNS or 'none'}`.")

# %% [markdown]
# ## 1. Error against batch size
#
# Per dataset: (a) final test error per norm against the batch size (mean over seeds, band
# min..max; the learning rate scales with the batch, every run sees the same number of
# examples); (b) BN's error three ways: Alg. 2's fixed statistics, the moving averages, and the
# training network's own batch statistics; (c) Wu & He's ImageNet numbers, labelled as theirs.

# %%
batch_claims = []
if BATCHSIZE_RUNS:
    roots = [Path(f) for f in BATCHSIZE_RUNS.split(",")]
    results = plot_batchsize.analyse(roots, Path(tempfile.mkdtemp()))
    runs = plot_batchsize.load(roots)
    for dataset, numbers in results.items():
        say(f"**`{dataset}`**{NOT_CIFAR.get(dataset, '')}: {numbers['setup']}.")
        table = plot_batchsize.cells_of([r for r in runs if r["dataset"] == dataset])
        show(plot_batchsize.figure(dataset, table), f"batchsize_{dataset}")
        errors = plot_batchsize.csv_rows(table)
        show_table(errors.pivot_table(index="norm", columns="batch_size", values="err_mean"),
                   f"error_{dataset}")
        batch_claims += numbers["claims"]
else:
    say("No batch-size runs here: `make batchsize` trains them.")

# %% [markdown]
# ## 2. Accuracy and the branch/skip variance against depth
#
# (a) test accuracy per variant against depth (a cross marks diverged seeds, scored at chance);
# (b) at initialisation, each block's branch variance relative to its skip path, with the 1/l
# line De & Smith predict for BN; (c) the same ratio over training for the deepest nets.

# %%
depth_claims = []
if DEPTH_RUNS:
    runs, dataset, depths, table, curves = plot_depth.summarise(Path(DEPTH_RUNS))
    say(f"**`{dataset}`**{NOT_CIFAR.get(dataset, '')}: depths {', '.join(map(str, depths))}.")
    show(plot_depth.figure(table, curves, depths, dataset), f"depth_{dataset}")
    show_table(plot_depth.csv_table(table), f"depth_{dataset}")
    depth_claims = plot_depth.claims(table, depths, dataset)
else:
    say("No depth runs here: `make depth` trains them.")

# %% [markdown]
# ## The claims, checked

# %%
claims = pd.DataFrame(batch_claims + depth_claims,
                      columns=["claim", "dataset", "ours", "verdict"])
show_table(claims, "claims")
counts = claims["verdict"].value_counts()
say(f"{len(claims)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items())
    + f". Batch size: {plot_batchsize.VERDICT_RULE} Depth: {plot_depth.VERDICT_RULE}")
