"""What the command lines of the experiments' analyses share (`python -m bnrepro.analyse
<experiment> RUN_DIRS --out results [--wandb]`, bnrepro.experiments): the parser with --out
and --wandb, saving the figures, and bad input reported as one `error:` line with exit
code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from bnrepro.analysis import wandb_figures
from bnrepro.atomic import atomic_save_figure


class AnalysisError(Exception):
    """Bad input to an analysis: reported as one `error:` line, exit code 2 (`refuse`)."""


def parser(experiment: str, doc: str) -> argparse.ArgumentParser:
    """The parser of `python -m bnrepro.analyse <experiment>`, described by the first line of
    the module docstring `doc`; the caller adds its run folders, then calls `parse`."""
    return argparse.ArgumentParser(prog=f"python -m bnrepro.analyse {experiment}",
                                   description=doc.split("\n")[0])


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`argv` parsed, with --out (default results/) and --wandb added. Selects matplotlib's
    Agg backend: a command line draws into files only (a notebook importing the module keeps
    its own backend)."""
    parser.add_argument("--out", type=Path, default=Path("results"))
    wandb_figures.add_flag(parser)
    args = parser.parse_args(argv)
    matplotlib.use("Agg")
    return args


def save_figures(figures: Mapping[str, Figure], out: Path) -> list[Path]:
    """Each figure as <out>/<stem>.png and .pdf (atomically), then closed."""
    import matplotlib.pyplot as plt

    paths = []
    for stem, fig in figures.items():
        paths += atomic_save_figure(fig, out / stem)
        plt.close(fig)
    return paths


def print_claims(claims: list[dict[str, str]]) -> None:
    """One line a claim: "  [verdict] claim"."""
    for c in claims:
        print(f"  [{c['verdict']}] {c['claim']}")


def refuse(err: Exception) -> int:
    """Bad input: one `error:` line on stderr; the exit code 2."""
    print(f"error: {err}", file=sys.stderr)
    return 2
