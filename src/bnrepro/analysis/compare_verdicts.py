"""Which verdicts differ between two results folders (say, the committed one and your own
`make reproduce`, or two machines' runs of the same commit).

    mkdir -p /tmp/committed && git archive HEAD results | tar -x -C /tmp/committed
    python -m bnrepro.analysis.compare_verdicts /tmp/committed/results results

Reads the claims files (<folder>/*_claims.json, format: bnrepro.claims) of both folders and
prints, per claim (claims file + claim text), the two verdicts where they differ, with both
folders' numbers, and which machines trained each side's runs. A claim found in one folder
only is named too. Exit status 0 whether or not verdicts differ; 2 if a folder holds no
claims files. Float results depend on the CPU (docs/outputs.md, "Which machine made a
number"), so two machines' runs of one commit can land on either side of a verdict's threshold:
this lists where they did.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnrepro.claims import ClaimsError, read_claims


def load(folder: Path) -> tuple[dict[tuple[str, str, str], dict], dict[str, list[str]]]:
    """(claims file, claim, dataset) -> claim row, and claims file -> its trained_on."""
    claims, machines = {}, {}
    for path in sorted(folder.glob("*_claims.json")):
        data = read_claims(path)
        machines[path.name] = data["trained_on"]
        for row in data["claims"]:
            claims[(path.name, row["claim"], row["dataset"])] = row
    return claims, machines


def differences(a: Path, claims_a: dict, b: Path, claims_b: dict) -> list[str]:
    """One paragraph per claim whose verdict differs (or that one folder lacks); claims as
    `load` gives them."""
    out = []
    for key in sorted(claims_a.keys() | claims_b.keys()):
        row_a, row_b = claims_a.get(key), claims_b.get(key)
        name = f"{key[0]}: {key[1]} [{key[2]}]"
        if row_a is None or row_b is None:
            out.append(f"{name}\n  only in {a if row_b is None else b}")
        elif row_a["verdict"] != row_b["verdict"]:
            out.append(f"{name}\n  {a}: {row_a['verdict']} ({row_a['ours']})\n"
                       f"  {b}: {row_b['verdict']} ({row_b['ours']})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="a results folder")
    parser.add_argument("b", type=Path, help="another results folder")
    args = parser.parse_args(argv)
    for folder in (args.a, args.b):
        if not any(folder.glob("*_claims.json")):
            print(f"error: no *_claims.json in {folder}; pass a results folder (make reproduce "
                  "writes results/)", file=sys.stderr)
            return 2
    try:
        (claims_a, machines_a), (claims_b, machines_b) = load(args.a), load(args.b)
    except ClaimsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for folder, by_file in ((args.a, machines_a), (args.b, machines_b)):
        trained = sorted({m.rsplit(": ", 1)[0] for ms in by_file.values() for m in ms}) \
            or ["not recorded"]
        print(f"{folder} trained on: {'; '.join(trained)}")
    diffs = differences(args.a, claims_a, args.b, claims_b)
    print(f"{len(diffs)} of {len(claims_a.keys() | claims_b.keys())} claims differ in verdict\n")
    print("\n\n".join(diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
