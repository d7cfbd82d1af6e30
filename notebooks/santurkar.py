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
# # Internal covariate shift on trial: Santurkar et al. (2018)
#
# Ioffe & Szegedy explain BN's benefit by a reduction of *internal covariate shift*: each
# layer's input distribution holds still while the layers below it learn. Santurkar et al.
# test that story three ways, and this notebook repeats each on our runs (`make santurkar`,
# `make dln`), reading the local run store only:
#
# 1. **Inject shift on purpose** (Sec. 2.1, Figs. 1-2): "noisy" BN adds random, time-varying
#    shifts and scales after BN. If stable distributions were what helps, it should train
#    badly; they report it trains about as well as BN.
# 2. **Measure shift the way optimisation feels it** (Sec. 2.2, Fig. 3): gradient ICS, how
#    much a layer's gradient changes when the layers below take their update. They report BN
#    does not reduce it (the cosine is no higher with BN).
# 3. **Look at the landscape instead** (Sec. 3, Fig. 4): along the gradient, BN's loss varies
#    less and its gradient stays more predictive ("smoother"), which they propose as the real
#    reason.
#
# Every verdict below is computed from the runs by the plot scripts' rules, never typed.

# %%
from pathlib import Path

import pandas as pd

from bnrepro.analysis.notebook import say, show, show_table
from bnrepro.experiments import dln as dln_experiment
from bnrepro.experiments import santurkar

# %% tags=["parameters"]
MNIST_RUNS = "../runs/santurkar_mnist"  # experiment=santurkar_mnist runs ("" to skip)
CIFAR_RUNS = "auto"  # santurkar_cifar runs; auto: ../runs/santurkar_cifar10[-jpeg]; "": skip
DLN_RUNS = "../runs/dln"  # deep linear net runs of `make dln` ("" to skip)

# %%
if CIFAR_RUNS == "auto":  # `make santurkar` uses true CIFAR-10 when it loads, else the mirror
    CIFAR_RUNS = next((f for f in ("../runs/santurkar_cifar10", "../runs/santurkar_cifar10-jpeg")
                       if Path(f).is_dir()), "")
roots = [Path(f) for f in (MNIST_RUNS, CIFAR_RUNS) if f and Path(f).is_dir()]
if not roots:
    raise FileNotFoundError("no Santurkar run store found: train one with `make santurkar`, or "
                            "set MNIST_RUNS / CIFAR_RUNS")
result = santurkar.analyse(roots)
ABOUT = {"cifar10-jpeg": " (CIFAR-10's images after JPEG recompression, the offline mirror: "
                         "**not CIFAR-10 numbers**)"}
for dataset, numbers in result["datasets"].items():
    say(f"**`{dataset}`**{ABOUT.get(dataset, '')}: {numbers['setup']}.")

# %% [markdown]
# ## 1. Noisy BN: accuracy and the shift of each layer's input (Figs. 1-2, 5-6)
#
# Per dataset: training and held-out accuracy (mean over seeds, band min..max) and the
# distributional shift of every hidden layer (Wasserstein-1, relative to the spread): between
# two successive training steps (their Fig. 8's measure, the one the claims compare), between
# consecutive evaluations (the drift over an evaluation interval) and since step 0; then one
# unit's input distribution over training as quantile fans, the analog of their Fig. 2. The
# `_lp` figures repeat it for the l_p normalisations (Sec. 3.3).

# %%
for groups in result["groups"].values():
    for name, fig in santurkar.shift_figures(groups).items():
        show(fig, name)

# %% [markdown]
# ## 2-3. Gradient ICS and the loss landscape (Figs. 3-4)
#
# Columns: held-out accuracy; gradient ICS of two layers (l2 difference and cosine of G and
# G', Def. 2.1); along the gradient, the range of the loss, the range of the gradient change
# and the "effective" beta-smoothness. One row per learning rate.

# %%
for groups in result["groups"].values():
    for name, fig in santurkar.measures_figures(groups).items():
        show(fig, name)

# %% [markdown]
# ## The deep linear network (Fig. 3b, Fig. 10)
#
# 25 layers of 10 x 10, full-batch gradient descent: no nonlinearity and no gradient noise, so
# any ICS comes from the layers' updates alone. Santurkar et al. find almost none without BN and
# almost uncorrelated G and G' with BN.

# %%
dln = dln_experiment.load_runs(DLN_RUNS) if DLN_RUNS and Path(DLN_RUNS).is_dir() else []
dln_claims = []
if dln:
    dln_result = dln_experiment.analyse(dln)
    for name, fig in dln_experiment.figures(dln_result).items():
        show(fig, name)
    dln_claims = dln_result["claims"]
else:
    say("No deep-linear-net runs here: `make dln` trains them.")

# %% [markdown]
# ## The claims, checked

# %%
claims = pd.DataFrame(result["claims"] + dln_claims)[["claim", "dataset", "ours", "verdict"]]
show_table(claims, "claims")
counts = claims["verdict"].value_counts()
say(f"{len(claims)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items())
    + f". Rules: {santurkar.claims_rule()}")
