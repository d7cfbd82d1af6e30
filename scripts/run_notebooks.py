"""Execute the notebooks headless, as the tests do, into executed .ipynb copies.

    python scripts/run_notebooks.py [NAME ...] [--out results/notebooks] [-p KEY=VALUE ...]

NAME: a notebook of notebooks/ (its .py source, e.g. fig1_shift); all of them by default.
Each runs top to bottom in a fresh `python3` kernel from notebooks/ (papermill), with its own
defaults (the run folders `make reproduce` writes) unless -p sets a parameter (the same for
every notebook named; a VALUE that is an existing path relative to here is passed absolute).
The executed copies, outputs included, go to --out/<NAME>.ipynb (ignored by git: the sources
are the reviewed form). A notebook that fails is named with its error and the others still
run; the exit code is 1 if any failed. Open the copies in Jupyter or VS Code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import papermill
from papermill.exceptions import PapermillExecutionError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def parameter(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"-p wants KEY=VALUE, got {text!r}")
    return key, str(Path(value).resolve()) if value and Path(value).exists() else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/notebooks"))
    parser.add_argument("-p", "--parameter", type=parameter, action="append", default=[],
                        metavar="KEY=VALUE", help="set a notebook parameter (repeatable)")
    args = parser.parse_args(argv)
    names = args.names or sorted(p.stem for p in NOTEBOOKS.glob("*.py"))
    if missing := [n for n in names if not (NOTEBOOKS / f"{n}.py").is_file()]:
        parser.error(f"no notebook {', '.join(missing)} in {NOTEBOOKS}")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        out = args.out / f"{name}.ipynb"
        try:
            papermill.execute_notebook(jupytext.read(NOTEBOOKS / f"{name}.py"), str(out),
                                       parameters=dict(args.parameter), kernel_name="python3",
                                       cwd=str(NOTEBOOKS), progress_bar=False)
        except PapermillExecutionError as err:
            failed.append(name)
            print(f"FAILED {name}: {err.ename}: {err.evalue} (see {out})", file=sys.stderr)
            continue
        print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
