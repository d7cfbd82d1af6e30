"""Gather every figure and every checked claim in results/ into one page, results/REPORT.md.

    python -m bnrepro.report [--results results] [--out results/REPORT.md] [--long DIR|none]

Reads only what the experiments' analyses (bnrepro.experiments) wrote: the claims files
<results>/*_claims.json (format: bnrepro.claims; each claim with the paper's number, ours with
its spread over seeds, the dataset, the source and a verdict computed from the runs) and the
figures <results>/*.png. Nothing here computes a verdict: rerun the analyses (`python -m
bnrepro.analyse <experiment>`, or `make reproduce`) to refresh them.

The page: the machine it was written on; a headline table (per source paper, how many of its
claims hold, are inconclusive, do not hold, were not measured); every claim, one line each; then one
section per experiment in the order of bnrepro.experiments.EXPERIMENTS, with its command, its
setup (as its analysis states it), its figures and its claims with the rule their verdicts
follow. An experiment with no claims file and no figure is not left out: it is listed as "not
run" with the command that runs it. Files that no experiment claims are shown under "Other
results".

Two tiers: `make reproduce` writes the CPU-sized tier into <results>, `make reproduce-long` the
long tier (the same experiments, bigger nets, longer training) into <results>/long, with the
same file names. `--long` names the long tier's folder (default: <results>/long when it holds
claims files; `--long none`: no long tier). A claim is the same claim at both tiers when its
claims file's name and its "claim" text are. With a long tier every claims table shows both
tiers' numbers and verdicts and whether they agree; the headline counts the long tier's verdict
where the long tier has the claim, else the CPU tier's; a section lists the verdicts that
change with scale; each experiment shows the long tier's figures first. Without one (no folder,
or one with no claims file and no figure) the page is exactly the one-tier page.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bnrepro.atomic import atomic_write_text
from bnrepro.claims import (
    OLD_RULE_VERDICT,
    SOURCES,
    VERDICTS,
    ClaimsError,
    by_old_rule,
    chance_decisions,
    evidence_text,
    read_claims,
)
from bnrepro.experiments import EXPERIMENTS
from bnrepro.run.ledger import duration
from bnrepro.run.machine import describe

NOT_MEASURED = "not measured"
TIME_KEYS = {"scale", "seconds", "invocations", "parts", "machines"}  # reproduce_time.json
# A row of a claims table: one claim at each tier that has it, by tier key ("cpu", "long"),
# with the experiment and the claims file it belongs to.
Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Tier:
    """One folder of results: the CPU-sized tier (`make reproduce`) or the long tier."""

    key: str                           # "cpu" or "long": the tables' column suffix
    folder: Path
    files: dict[str, dict[str, Any]]   # claims files by name (read_claims)
    figures: list[str]                 # figure names
    problems: list[str]                # one warning per unreadable claims file
    link_prefix: str                   # from the report's folder to this one ("" or "long/")
    shown_as: str                      # this folder relative to <results> ("" or "long/")
    label: str = ""                    # " (long tier)"; "" while the page has one tier

    def holds_anything(self) -> bool:
        return bool(self.files or self.figures or self.problems)


def machine() -> str:
    """This machine in one line: OS, architecture, CPU (model, vector ISA), cores, GPU (if
    torch sees one), Python and torch (bnrepro.run.machine.describe)."""
    m = describe(torch.device("cuda") if torch.cuda.is_available() else None)
    gpu = "no GPU" if m["gpu"] == "none" else f"GPU {m['gpu']}"
    return (f"{m['os']}, {m['cpu']} ({m['cpu_capability']}), {m['cores']} CPU cores, {gpu}, "
            f"Python {m['python']}, torch {m['torch']}")


def trained_on_line(data: dict, label: str = "") -> list[str]:
    """Which machines trained the runs behind a claims file (floats depend on the CPU)."""
    machines = data.get("trained_on") or ["not recorded"]
    return [f"Trained on{label}: {'; '.join(machines)}."]


def tier_machines(tier: Tier) -> list[str]:
    """The distinct machines that trained any run of a tier (trained_on's entries without their
    run counts, which are per claims file)."""
    entries = [m for data in tier.files.values() for m in data.get("trained_on") or []]
    return sorted({entry.rsplit(": ", 1)[0] for entry in entries}) or ["not recorded"]


def matching(names: list[str], patterns: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def cell(text: Any) -> str:
    """A markdown table cell: no line breaks, no unescaped pipes."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def counted(row: Row, tiers: list[Tier]) -> dict[str, Any]:
    """The claim a row counts as: the long tier's where the long tier has it, else the CPU
    tier's (tiers are in that order, CPU first)."""
    return next(row[t.key] for t in reversed(tiers) if row.get(t.key))


def agrees(row: Row) -> str:
    """"yes" / "no": both tiers measured the claim and gave it the same / another verdict;
    "-": a tier lacks the claim or did not measure it."""
    cpu, long = row.get("cpu"), row.get("long")
    if not cpu or not long or NOT_MEASURED in (cpu["verdict"], long["verdict"]):
        return "-"
    return "yes" if cpu["verdict"] == long["verdict"] else "no"


def bold_verdict(claim: dict[str, Any] | None) -> str:
    return f"**{claim['verdict']}**" if claim else "-"


def dataset_cell(row: Row, tiers: list[Tier]) -> str:
    """The dataset, named once when every tier used the same, else per tier."""
    named = {t.key: row[t.key]["dataset"] for t in tiers if row.get(t.key)}
    if len(set(named.values())) == 1:
        return cell(next(iter(named.values())))
    return cell(", ".join(f"{dataset} ({key})" for key, dataset in named.items()))


Column = tuple[str, Callable[[Row], str]]


def one_tier_columns(rows: list[Row], tier: Tier) -> list[Column]:
    """claim, source, paper, ours, dataset, a "test" (bnrepro.claims.evidence_text) where any
    claim carries its evidence, verdict."""
    tested = any("evidence" in row[tier.key] for row in rows)
    columns: list[Column] = [(k, lambda r, k=k: cell(r[tier.key][k]))
                             for k in ("claim", "source", "paper", "ours", "dataset")]
    if tested:
        columns.append(("test", lambda r: cell(evidence_text(r[tier.key]))))
    return [*columns, ("verdict", lambda r: bold_verdict(r[tier.key]))]


def two_tier_columns(rows: list[Row], tiers: list[Tier], tested: bool) -> list[Column]:
    """claim, source, paper (as the counted tier states them), dataset, then each tier's ours
    and verdict, and whether they agree. The test behind a verdict is shown for the long tier
    only (`tested`), just before its verdict: a test column per tier would make the widest
    tables of the page wider still, and the long tier's verdict is the one the headline counts;
    the CPU tier's tests stay in its own <name>_claims.md beside its claims files."""
    columns: list[Column] = [(k, lambda r, k=k: cell(counted(r, tiers)[k]))
                             for k in ("claim", "source", "paper")]
    columns.append(("dataset", lambda r: dataset_cell(r, tiers)))
    for tier in tiers:
        columns.append((f"ours ({tier.key})",
                        lambda r, t=tier.key: cell(r[t]["ours"]) if r.get(t) else "-"))
        if tested and tier.key == "long" and any("evidence" in (r.get("long") or {})
                                                 for r in rows):
            columns.append(("test (long)",
                            lambda r: cell(evidence_text(r["long"])) if r.get("long") else "-"))
        columns.append((f"verdict ({tier.key})", lambda r, t=tier.key: bold_verdict(r.get(t))))
    return [*columns, ("agrees across scale", agrees)]


def claims_table(rows: list[Row], tiers: list[Tier], with_experiment: bool = False) -> list[str]:
    """One row per claim. With two tiers the one-line-each list (`with_experiment`) leaves the
    tests out: it is the overview, each experiment's section shows them."""
    columns = (one_tier_columns(rows, tiers[0]) if len(tiers) == 1
               else two_tier_columns(rows, tiers, tested=not with_experiment))
    if with_experiment:
        columns.insert(0, ("experiment", lambda r: cell(r["experiment"])))
    lines = ["| " + " | ".join(head for head, _ in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(show(row) for _, show in columns) + " |" for row in rows]


def pair_claims(name: str, tiers: list[Tier], experiment: str) -> list[Row]:
    """The rows of claims file `name`: a claim is the same at both tiers when its text is (the
    n-th repeat of a text pairs with the n-th); the CPU tier's order, then the long tier's
    claims the CPU tier lacks."""
    rows: dict[tuple[str, int], Row] = {}
    for tier in tiers:
        seen: Counter[str] = Counter()
        for claim in tier.files.get(name, {}).get("claims", []):
            key = (claim["claim"], seen[claim["claim"]])
            seen[claim["claim"]] += 1
            rows.setdefault(key, {"experiment": experiment, "file": name})[tier.key] = claim
    return list(rows.values())


def headline(claims: list[dict[str, str]]) -> list[str]:
    """Per source, in SOURCES order: the count of each verdict (and of the old rule's "mixed",
    while a claims file from before issue 26 is still in the folder)."""
    verdicts = [*VERDICTS, *([OLD_RULE_VERDICT] * any(
        c["verdict"] == OLD_RULE_VERDICT for c in claims))]
    lines = ["| source | claims | " + " | ".join(verdicts) + " |",
             "|---|---|" + "---|" * len(verdicts)]
    for source in SOURCES:
        mine = [c for c in claims if c["source"] == source]
        if not mine:
            continue
        counts = [sum(c["verdict"] == v for c in mine) for v in verdicts]
        name = "our own checks (not paper claims)" if source == "ours" else source
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(map(str, counts)) + " |")
    return lines


def headline_caption(rows: list[Row], tiers: list[Tier]) -> list[str]:
    """Which tier's verdict each count takes (nothing to say with one tier)."""
    if len(tiers) == 1:
        return []
    from_long = sum(bool(row.get("long")) for row in rows)
    return [f"Each claim is counted once, by its long tier's verdict where the long tier "
            f"checked it ({from_long} claims), else by its CPU tier's ({len(rows) - from_long} "
            "claims).", ""]


def scale_changes(rows: list[Row], tiers: list[Tier]) -> list[str]:
    """The section "Verdicts that change with scale": every claim that both tiers measured and
    judged differently, CPU tier -> long tier (nothing with one tier)."""
    if len(tiers) == 1:
        return []
    both = [row for row in rows if agrees(row) != "-"]
    changed = [row for row in both if agrees(row) == "no"]
    lines = ["## Verdicts that change with scale", "",
             f"Of the {len(both)} claims both tiers measured, {len(changed)} changed verdict "
             "(CPU tier -> long tier):", ""]
    lines += [f"- {row['experiment']}: {row['long']['claim']} ({row['long']['source']}): "
              f"{row['cpu']['verdict']} -> {row['long']['verdict']}" for row in changed]
    return [*lines, *(["- none"] * (not changed)), ""]


def old_rule_line(data: dict[str, Any], make: str, label: str = "") -> list[str]:
    """A warning above a claims table whose verdicts the old rule decided (bnrepro.claims)."""
    if not by_old_rule(data):
        return []
    return [f"**Decided by the old rule**{label} (before issue 26: the sign of the seed means "
            "decided, so a null effect could read \"does not hold\"; \"mixed\" = the means agree, "
            f"the seeds overlap), with no evidence recorded: rerun `{make}` for the one rule's "
            "verdicts.", ""]


def chance_line(claims: list[dict[str, Any]]) -> list[str]:
    """How many decisive verdicts chance alone would give at this many tested comparisons."""
    tested = [c for c in claims if "p_value" in (c.get("evidence") or {})]
    if not tested:
        return []
    decided = sum(c["verdict"] in ("holds", "does not hold") for c in tested)
    return [f"Of the {len(tested)} claims put to the permutation test, {decided} came out "
            f"decisive (holds or does not hold); with no effect at all, chance alone would give "
            f"{chance_decisions(tested):.1f} on average (each test at "
            "alpha 0.05 in either direction).", ""]


def relative_prefix(folder: Path, start: Path) -> str:
    """`folder` as a prefix for file names, relative to `start` ("" for the same folder)."""
    prefix = os.path.relpath(folder.resolve(), start.resolve()).replace(os.sep, "/")
    return "" if prefix == "." else prefix + "/"


def load(results: Path, key: str, out: Path, base: Path) -> Tier:
    """A tier's claims files by name, every figure name, and one warning per unreadable claims
    file; links relative to the report `out`, names shown relative to `base` (<results>)."""
    files, problems = {}, []
    for path in sorted(results.glob("*_claims.json")):
        try:
            files[path.name] = read_claims(path)
        except ClaimsError as err:
            problems.append(str(err))
    return Tier(key, results, files, sorted(p.name for p in results.glob("*.png")), problems,
                relative_prefix(results, out.parent), relative_prefix(results, base))


def load_tiers(results: Path, long: Path | None, out: Path) -> list[Tier]:
    """[CPU tier] or, when `long` holds anything, [CPU tier, long tier], labelled by tier."""
    cpu = load(results, "cpu", out, results)
    tier = load(long, "long", out, results) if long is not None else None
    if tier is None or not tier.holds_anything():
        return [cpu]
    return [dataclasses.replace(cpu, label=" (CPU tier)"),
            dataclasses.replace(tier, label=" (long tier)")]


def figure_lines(names: list[str], tier: Tier) -> list[str]:
    return [f"![{n}]({tier.link_prefix}{n})\n\n`{n}`{tier.label}\n" for n in names]


def experiment_figures(tier: Tier, patterns: tuple[str, ...], names: list[str]) -> list[str]:
    """A tier's figures of one experiment: those its patterns match, then those its claims
    files name."""
    figs = matching(tier.figures, patterns)
    for name in names:
        listed = tier.files.get(name, {}).get("figures", [])
        figs += [f for f in listed if f in tier.figures and f not in figs]
    return figs


def tier_lines(name: str, tier: Tier, make: str | None) -> list[str]:
    """One tier's lines above a claims table: setup and file (in an experiment's section,
    `make` its command), the machines, the old rule's warning."""
    data = tier.files.get(name)
    if data is None:
        return [f"Not run{tier.label}: no `{tier.shown_as}{name}`.", ""]
    setup = [] if make is None else [
        f"Setup{tier.label}: {data['setup'] or '(not stated)'}. Claims file{tier.label}: "
        f"`{tier.shown_as}{name}`.", ""]
    return [*setup, *trained_on_line(data, tier.label), "",
            *(old_rule_line(data, make, tier.label) if make is not None else [])]


def claims_section(name: str, rows: list[Row], tiers: list[Tier], make: str | None
                   ) -> list[str]:
    """A claims file's subsection: title, each tier's setup and machines, the table, the rule
    (once when every tier states the same)."""
    present = [t for t in tiers if name in t.files]
    rules = [t.files[name]["verdict_rule"] or "(not stated)" for t in present]
    rule_lines = ([f"Verdict rule: {rules[0]}", ""] if len(set(rules)) == 1 else
                  [line for t, rule in zip(present, rules, strict=True)
                   for line in (f"Verdict rule{t.label}: {rule}", "")])
    return [f"### {present[-1].files[name]['title']}", "",
            *(line for t in tiers for line in tier_lines(name, t, make)),
            *claims_table(rows, tiers), "", *rule_lines]


def head_lines(results: Path, tiers: list[Tier]) -> list[str]:
    """The title and where the page comes from: the folders, this machine, each tier's."""
    if len(tiers) == 1:
        where = f"in `{results}`"
    else:
        where = (f"in `{results}` (the CPU tier, `make reproduce`) and `{tiers[1].folder}` (the "
                 "long tier, `make reproduce-long`: the same experiments, bigger nets, longer "
                 "training)")
    lines = ["# Report: Batch Normalization's claims, checked on our runs", "",
             "Written by `python -m bnrepro.report` (`make report`) from the claims "
             f"files and figures {where}, which the experiments' analyses compute from "
             "the run store. Every verdict is computed from the runs by the analysis of the "
             "experiment named in its section, with "
             "the rule stated there; nothing here is typed by hand.", "",
             f"Report written on: {machine()}. Each experiment's setup (steps, width, seeds) is "
             "stated in its section; the datasets are named exactly (cifar10-jpeg is the JPEG "
             "mirror, not CIFAR-10).", ""]
    if len(tiers) > 1:
        lines += [line for t in tiers
                  for line in (f"Trained on{t.label}: {'; '.join(tier_machines(t))}.", "")]
    return lines + [line for t in tiers for line in wall_time_lines(t)]


def wall_time_lines(tier: Tier) -> list[str]:
    """How long `python -m bnrepro.reproduce` took over this tier, summed over every
    invocation that worked on it (<folder>/reproduce_time.json, bnrepro.run.ledger)."""
    path = tier.folder / "reproduce_time.json"
    if not path.is_file():
        return []
    try:
        spent = json.loads(path.read_text())
        if not isinstance(spent, dict) or not spent.keys() >= TIME_KEYS:
            raise ValueError(f"not an object with {', '.join(sorted(TIME_KEYS))}")
    except ValueError as err:
        return [f"Wall time{tier.label}: `{tier.shown_as}reproduce_time.json` is unreadable "
                f"({err}); `python -m bnrepro.reproduce` rewrites it.", ""]
    parts = ", ".join(f"{part} {duration(s)}" for part, s in spent["parts"].items())
    n = spent["invocations"]
    return [f"Wall time{tier.label}: {duration(spent['seconds'])} of `python -m bnrepro.reproduce "
            f"--scale {spent['scale']}` over {n} invocation{'s' if n != 1 else ''} (on "
            f"{'; '.join(spent['machines'])}); by part: {parts} "
            f"(`{tier.shown_as}reproduce_time.json`).", ""]


def render(results: Path, out: Path, long: Path | None = None) -> tuple[str, dict[str, Any]]:
    """The report's markdown, and what it contains (for the caller's message and tests).
    `long`: the long tier's folder (None, or one holding nothing: a one-tier page)."""
    tiers = load_tiers(results, long, out)
    folders = " or ".join(str(t.folder) for t in tiers)
    sections, rows, not_run, long_not_run = [], [], [], []
    used_files: set[str] = set()
    used_figures: dict[str, set[str]] = {t.key: set() for t in tiers}
    for exp in EXPERIMENTS.values():
        names = sorted({n for t in tiers for n in matching(list(t.files), exp.claims)})
        figs = {t.key: experiment_figures(t, exp.figures, names) for t in tiers}
        used_files |= set(names)
        for t in tiers:
            used_figures[t.key] |= set(figs[t.key])
        if not names and not any(figs.values()):
            not_run.append(exp)
            if exp.in_reproduce:
                sections += [f"## {exp.title}", "", f"**Not run**: `{exp.make}` (no "
                             f"{' / '.join(exp.claims)} and no {' / '.join(exp.figures)} in "
                             f"{folders}).", ""]
            continue
        if len(tiers) > 1 and not figs["long"] and not any(n in tiers[1].files for n in names):
            long_not_run.append(exp)
        sections += [f"## {exp.title}", "", f"Produced by `{exp.make}`."
                     + ("" if exp.in_reproduce else " Not part of `make reproduce`."), ""]
        for name in names:
            mine = pair_claims(name, tiers, exp.name)
            rows += mine
            sections += claims_section(name, mine, tiers, exp.make)
        if not names:
            sections += ["No claims are checked for this experiment; its figures:", ""]
        # The long tier's figures are the headline ones: first.
        for t in reversed(tiers):
            sections += figure_lines(sorted(figs[t.key]), t)
    other_files = sorted({n for t in tiers for n in t.files} - used_files)
    other_figures = {t.key: sorted(set(t.figures) - used_figures[t.key]) for t in tiers}
    if other_files or any(other_figures.values()):
        sections += ["## Other results", ""]
        for name in other_files:
            mine = pair_claims(name, tiers, name)
            rows += mine
            sections += claims_section(name, mine, tiers, None)
        for t in reversed(tiers):
            sections += figure_lines(other_figures[t.key], t)

    claims = [{**counted(row, tiers), "experiment": row["experiment"]} for row in rows]
    head = head_lines(results, tiers)
    if not_run:
        head += ["Not run: " + ", ".join(f"`{e.make}`" + ("" if e.in_reproduce else
                                                          " (optional)") for e in not_run)
                 + (" (no results in this folder; their claims are not counted below)."
                    if len(tiers) == 1 else
                    " (no results in either tier; their claims are not counted below)."), ""]
    if long_not_run:
        head += ["Not run at the long tier: " + ", ".join(f"`{e.make}`" for e in long_not_run)
                 + " (their CPU tier's verdicts are counted below).", ""]
    problems = [p for t in tiers for p in t.problems]
    if problems:
        head += ["Unreadable claims files (left out): " + "; ".join(problems), ""]
    old = sum(by_old_rule(next(t.files[row["file"]] for t in reversed(tiers)
                               if row.get(t.key))) for row in rows)
    if old:
        head += [f"**{old} of the {len(claims)} claims were decided by the old rule** (their "
                 "claims files predate issue 26's one rule and carry no evidence; their "
                 "sections say which command reruns them).", ""]
    head += ["## Headline", "", *headline_caption(rows, tiers), *headline(claims), "",
             *chance_line(claims), *scale_changes(rows, tiers),
             "## Every claim", "",
             *claims_table(rows, tiers, with_experiment=True), ""]
    text = "\n".join(head + sections).rstrip() + "\n"
    figures = sorted(t.shown_as + f for t in tiers
                     for f in used_figures[t.key] | set(other_figures[t.key]))
    return text, {"claims": claims, "rows": rows, "not_run": [e.name for e in not_run],
                  "tiers": [t.key for t in tiers], "figures": figures, "problems": problems}


def long_folder(results: Path, choice: str | None) -> Path | None:
    """The long tier's folder: `choice` ("none": no long tier), by default <results>/long when
    it holds a claims file."""
    if choice is None:
        default = results / "long"
        return default if any(default.glob("*_claims.json")) else None
    return None if choice.lower() == "none" else Path(choice)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"),
                        help="the folder the analyses wrote to")
    parser.add_argument("--out", type=Path, default=None,
                        help="the report file (default: <results>/REPORT.md)")
    parser.add_argument("--long", default=None,
                        help="the long tier's folder (default: <results>/long when it holds "
                             "claims files); 'none': no long tier")
    args = parser.parse_args(argv)
    out = args.out or args.results / "REPORT.md"
    if not args.results.is_dir():
        print(f"error: no results folder {args.results}", file=sys.stderr)
        return 2
    long = long_folder(args.results, args.long)
    text, contents = render(args.results, out, long)
    atomic_write_text(out, text)
    print(f"wrote {out}: {len(contents['claims'])} claims, {len(contents['figures'])} figures"
          + (f"; not run: {', '.join(contents['not_run'])}" if contents["not_run"] else ""))
    if args.long and long is not None and contents["tiers"] == ["cpu"]:
        print(f"warning: no claims file and no figure in the long tier's {long}",
              file=sys.stderr)
    for problem in contents["problems"]:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
