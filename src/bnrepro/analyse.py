"""Turn finished runs into an experiment's results: `python -m bnrepro.analyse <experiment>
RUN_DIRS [options]` runs that experiment's analysis (bnrepro.experiments.EXPERIMENTS) on the
run store and writes its figures, tables and claims into --out (default results/).
`python -m bnrepro.analyse <experiment> --help` lists its options; with no experiment, the
experiments are listed."""

from __future__ import annotations

import sys

from bnrepro.experiments import EXPERIMENTS, experiment


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__.strip() + "\n\nexperiments:")
        for e in EXPERIMENTS.values():
            print(f"  {e.name:<12} {e.title}")
        return 0 if argv else 2
    return experiment(argv[0]).load().main(argv[1:]) or 0


if __name__ == "__main__":
    raise SystemExit(main())
