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
#    statistics of the examples it sees together (per GPU in Wu & He), so with few of them its
#    statistics are noisy and its error rises; Group and Layer Norm do not look across the
#    batch and should not care. Batch Renorm (Ioffe 2017) makes training and inference agree
#    and should do better with small minibatches. Here the SGD batch is fixed (32, one rate) and
#    BN/Batch Renorm take statistics over ghost batches of b examples. `make batchsize`.
# 2. **Residual depth** (De & Smith 2020): in a residual net BN divides each branch by the
#    spread of the growing skip path, so block l's branch contributes ~1/l of its output: BN
#    biases deep residual blocks towards the identity, and a learnable scalar initialised to 0
#    on each branch (SkipInit) trains deep nets without any normalisation. `make depth`.
#
# This notebook reads the local run store only; every verdict is computed from the runs by the
# rules of `bnrepro.experiments.batchsize` and `.depth` (`python -m bnrepro.analyse batchsize`,
# `... depth`).

# %%
from pathlib import Path

import pandas as pd

from bnrepro.analysis.notebook import say, show, show_table
from bnrepro.experiments import batchsize, depth

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
# Per dataset: (a) final test error per norm against the statistics batch b (mean over seeds,
# band min..max; SGD batch 32 and one rate for every run; GN, LN and no norm run once and are
# flat by construction, dashed); (b) BN's error three ways: Alg. 2's fixed statistics, the
# moving averages, and the training network on test ghost batches of b; (c) Wu & He's ImageNet
# numbers, labelled as theirs. MNIST's MLP is the fully-connected arm (BN over b values per
# unit), where Wu & He's claims are not measured.

# %%
batch_claims = []
if BATCHSIZE_RUNS:
    result = batchsize.analyse([Path(f) for f in BATCHSIZE_RUNS.split(",")])
    for dataset, numbers in result.numbers.items():
        say(f"**`{dataset}`**{NOT_CIFAR.get(dataset, '')}: {numbers['setup']}.")
        table = result.tables[dataset]
        show(batchsize.figure(dataset, table), f"batchsize_{dataset}")
        errors = batchsize.csv_rows(table)
        show_table(errors.pivot_table(index="norm", columns="batch_size", values="err_mean"),
                   f"error_{dataset}")
    batch_claims = result.claims
else:
    say("No batch-size runs here: `make batchsize` trains them.")

# %% [markdown]
# ## 2. Accuracy and the branch/skip variance against depth
#
# (a) test accuracy per variant against depth, each at its best rate of the grid on validation
# (a cross marks diverged seeds, scored at chance); (b) fresh nets up to depth 110 (forward
# passes): each block's branch variance relative to its skip path, per channel (De & Smith's)
# and pooled, with the 1/l line De & Smith predict for BN; (c) the same ratio over training for
# the deepest nets.

# %%
depth_claims = []
if DEPTH_RUNS:
    found = depth.analyse(Path(DEPTH_RUNS))
    say(f"**`{found.dataset}`**{NOT_CIFAR.get(found.dataset, '')}: depths "
        f"{', '.join(map(str, found.depths))}.")
    for name, fig in depth.figures(found).items():
        show(fig, name)
    show_table(depth.csv_table(found.table), f"depth_{found.dataset}")
    depth_claims = found.claims
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
    + f". Batch size: {batchsize.VERDICT_RULE} Depth: {depth.VERDICT_RULE}")
