"""Which experiments exist: one registry that the command line (`python -m bnrepro.analyse`),
the report (bnrepro.report), the Makefile's checks and the tests read.

An experiment is one unit:
- a config, conf/experiment/<config>.yaml (what trains; `python -m bnrepro.train -m
  experiment=<config>`),
- a module here, bnrepro/experiments/<module>.py, that turns finished runs into results:
    `analyse(...) -> result`: tables, numbers and claims (verdicts by the one rule,
    bnrepro.claims.compare, each with its evidence),
    `figures(result) -> {file stem: matplotlib Figure}`,
    `main(argv) -> int`: the command line `python -m bnrepro.analyse <name> RUN_DIRS --out
    results [--wandb]`, which finds the runs, analyses them, writes the figures, tables and
    claims files into the results folder and prints what it wrote;
- a notebook, notebooks/<notebook>.py, that imports the module,
- a test file, tests/test_experiment_<module>.py,
- a `make <name>` target that trains and then analyses,
- and its entry below. Adding an experiment adds those five files and one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from types import ModuleType


@dataclass(frozen=True)
class Experiment:
    name: str  # the registry key, the `make` target and `python -m bnrepro.analyse`'s argument
    title: str  # the report's section heading
    configs: tuple[str, ...]  # the configs it trains, paths under conf/
    module: str  # bnrepro.experiments.<module>: its analysis
    notebook: str  # notebooks/<notebook>.py
    claims: tuple[str, ...]  # file name patterns of its claims files in results/
    figures: tuple[str, ...]  # file name patterns of its figures in results/
    in_reproduce: bool = True  # part of `make reproduce`

    @property
    def make(self) -> str:
        return f"make {self.name}"

    def load(self) -> ModuleType:
        """Its analysis module (imported on demand: matplotlib and pandas are heavy)."""
        return import_module(f"bnrepro.experiments.{self.module}")


# The report's order.
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("fig1", "Fig. 1: MNIST with and without BN (Ioffe & Szegedy Sec. 4.1)",
               configs=("experiment/fig1_mnist.yaml",), module="fig1", notebook="fig1_shift",
               claims=("fig1_*_claims.json",), figures=("fig1_*.png",)),
    Experiment("sweep-mnist", "The MNIST sweep: where BN helps",
               configs=("experiment/sweep_mnist.yaml",), module="sweep", notebook="sweep",
               claims=("sweep_mnist*_claims.json",), figures=("sweep_mnist*.png",)),
    Experiment("fig2", "Figs. 2-3: accelerating BN networks (Ioffe & Szegedy Sec. 4.2)",
               configs=("experiment/fig2_cifar.yaml", "experiment/fig2_cifar_lr.yaml"),
               module="fig2", notebook="fig2_cifar",
               claims=("fig2_*_claims.json",), figures=("fig2_*.png",)),
    Experiment("santurkar", "Internal covariate shift on trial (Santurkar et al. 2018)",
               configs=("experiment/santurkar_mnist.yaml", "experiment/santurkar_cifar.yaml"),
               module="santurkar", notebook="santurkar",
               claims=("santurkar*_claims.json",), figures=("santurkar*.png",)),
    Experiment("dln", "Deep linear network: ICS and landscape (Santurkar et al. 2018)",
               configs=("dln.yaml",), module="dln", notebook="santurkar",
               claims=("dln_claims.json",), figures=("dln.png",)),
    Experiment("batchsize", "Batch size: BN and its alternatives (Wu & He 2018)",
               configs=("experiment/batchsize_mnist.yaml", "experiment/batchsize_cifar.yaml"),
               module="batchsize", notebook="batchsize_depth",
               claims=("batchsize*_claims.json",), figures=("batchsize*.png",)),
    Experiment("depth", "Residual depth: BN, no norm, SkipInit (De & Smith 2020)",
               configs=("experiment/depth_cifar.yaml",), module="depth",
               notebook="batchsize_depth", claims=("depth*_claims.json",),
               figures=("depth*.png",)),
    Experiment("sweep-cifar", "CPU-sized CIFAR sweep",
               configs=("experiment/sweep_cifar.yaml",), module="sweep", notebook="sweep",
               claims=("sweep_cifar*_claims.json",), figures=("sweep_cifar*.png",),
               in_reproduce=False),
)}


def experiment(name: str) -> Experiment:
    """The registered experiment `name`; a clear error listing the others if there is none."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise SystemExit(f"error: no experiment {name!r}; the experiments are: "
                         f"{', '.join(EXPERIMENTS)} (bnrepro.experiments.EXPERIMENTS)") from None
