"""bnrepro.report with a long tier (results/long, `make reproduce-long`): each claim at both
tiers side by side with whether they agree, a headline that counts the long tier's verdict
where it has the claim, the verdicts that change with scale, the long tier's figures first;
and without a long tier the page is exactly the one-tier page. The claims files are written
by bnrepro.claims.write_claims, so their format is the real one: no runs needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnrepro import report
from bnrepro.claims import VERDICTS, write_claims
from bnrepro.run.machine import one_line

FIG1 = "fig1_mnist_claims.json"   # at both tiers
DLN = "dln_claims.json"           # at the CPU tier only
IOFFE, SANTURKAR, WU = "Ioffe & Szegedy (2015)", "Santurkar et al. (2018)", "Wu & He (2018)"
# claim: (source, CPU tier's verdict, long tier's verdict); None: the tier lacks the claim.
FIG1_CLAIMS = {
    "same verdict": (IOFFE, "holds", "holds"),
    "flips with scale": (IOFFE, "holds", "does not hold"),
    "not measured at long": (SANTURKAR, "inconclusive", "not measured"),
    "cpu tier only": (SANTURKAR, "does not hold", None),
    "long tier only": (SANTURKAR, None, "holds"),
}
AGREES = {"same verdict": "yes", "flips with scale": "no", "not measured at long": "-",
          "cpu tier only": "-", "long tier only": "-"}
DLN_CLAIMS = {"dln claim": (WU, "inconclusive", None)}
MACHINES = {"cpu": {"cpu": "CPU A", "cpu_capability": "AVX2", "threads": 2, "cores": 2,
                    "gpu": "none", "torch": "2.15.0"},
            "long": {"cpu": "CPU B", "cpu_capability": "AVX512", "threads": 16, "cores": 16,
                     "gpu": "NVIDIA H200", "torch": "2.15.0"}}
TIER = {"cpu": 1, "long": 2}  # where each tier's verdict sits in a spec
LABEL = {"cpu": "CPU tier", "long": "long tier"}
MOVED = "flips with scale"  # the one claim whose long tier ran on other data


def dataset(claim: str, tier: str) -> str:
    return "cifar10" if (claim, tier) == (MOVED, "long") else "cifar10-jpeg"


def claim_row(claim: str, spec: tuple, tier: str) -> dict:
    """A claim as tier `tier` states it: numbers and test marked with the tier."""
    return {"claim": claim, "paper": f"paper {claim}", "ours": f"ours {tier} {claim}",
            "verdict": spec[TIER[tier]], "dataset": dataset(claim, tier), "source": spec[0],
            "evidence": {"rule": f"test {tier} {claim}"}}


def write_tier(folder: Path, tier: str, name: str, claims: dict, figures: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [claim_row(c, spec, tier) for c, spec in claims.items() if spec[TIER[tier]]]
    write_claims(folder / name, rows, experiment=name, title=f"title of {name}",
                 make="make x", setup=f"setup {tier}", figures=figures,
                 verdict_rule="the one rule", summaries=[{"machine": MACHINES[tier]}])
    for figure in figures:
        (folder / figure).write_bytes(b"\x89PNG")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """results/: fig1 (two figures) and dln; results/long: fig1 only, one figure."""
    results = tmp_path / "results"
    write_tier(results, "cpu", FIG1, FIG1_CLAIMS, ["fig1_mnist.png", "fig1_mnist_layers.png"])
    write_tier(results, "cpu", DLN, DLN_CLAIMS, [])
    write_tier(results / "long", "long", FIG1, FIG1_CLAIMS, ["fig1_mnist.png"])
    return results


def rendered(results: Path, *args: str) -> str:
    assert report.main(["--results", str(results), *args]) == 0
    return (results / "REPORT.md").read_text()


def cells(line: str) -> list[str]:
    """A markdown table row's cells (the fixture's texts hold no pipes)."""
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def table_after(text: str, marker: str) -> list[dict[str, str]]:
    """The first table after the line `marker`: one dict per row, by column header."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|")
                 and i > lines.index(marker))
    head = cells(lines[start])
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(head, cells(line), strict=True)))
    return rows


def counts_row(claims: list[tuple[str, str]], source: str, name: str) -> str:
    """The headline row of `source` for (source, verdict) pairs."""
    verdicts = [v for s, v in claims if s == source]
    return f"| {name} | {len(verdicts)} | " + " | ".join(
        str(verdicts.count(v)) for v in VERDICTS) + " |"


def test_no_long_tier_is_byte_identical_to_the_one_tier_page(tmp_path, results):
    """An empty or missing long folder, or `--long none`, leaves the page as it was."""
    (results / "long" / FIG1).unlink()
    (results / "long" / "fig1_mnist.png").unlink()  # results/long: an empty folder
    out = results / "REPORT.md"
    one_tier, _ = report.render(results, out)
    assert "(long tier)" not in one_tier and "agrees across scale" not in one_tier
    assert report.render(results, out, results / "long")[0] == one_tier
    assert report.render(results, out, tmp_path / "nowhere")[0] == one_tier
    assert rendered(results) == one_tier
    write_tier(results / "long", "long", FIG1, FIG1_CLAIMS, [])
    assert rendered(results, "--long", "none") == one_tier
    assert rendered(results) != one_tier  # the default finds results/long's claims file


def test_every_claim_shows_both_tiers_and_whether_they_agree(results):
    text = rendered(results)
    rows = {r["claim"]: r for r in table_after(text, "## Every claim")}
    assert set(rows) == {*FIG1_CLAIMS, *DLN_CLAIMS}
    for claim, spec in {**FIG1_CLAIMS, **DLN_CLAIMS}.items():
        row = rows[claim]
        for tier in ("cpu", "long"):
            has = spec[TIER[tier]] is not None
            assert row[f"ours ({tier})"] == (f"ours {tier} {claim}" if has else "-"), claim
            assert row[f"verdict ({tier})"] == (f"**{spec[TIER[tier]]}**" if has else "-")
        assert row["source"] == spec[0] and row["paper"] == f"paper {claim}"
        assert row["agrees across scale"] == AGREES.get(claim, "-"), claim
    assert rows["dln claim"]["experiment"] == "dln"
    # Named once where the tiers agree, per tier where they do not.
    assert rows["same verdict"]["dataset"] == "cifar10-jpeg"
    assert rows[MOVED]["dataset"] == "cifar10-jpeg (cpu), cifar10 (long)"


def test_each_experiments_table_shows_both_tiers_and_the_long_tiers_test(results):
    text = rendered(results)
    rows = table_after(text, "### title of " + FIG1)
    assert [r["claim"] for r in rows] == list(FIG1_CLAIMS)  # CPU order, then long-only claims
    flips = rows[1]
    assert (flips["ours (cpu)"], flips["ours (long)"]) == ("ours cpu flips with scale",
                                                           "ours long flips with scale")
    assert flips["test (long)"] == "test long flips with scale"
    assert flips["agrees across scale"] == "no"
    assert "test cpu" not in text.split("## Every claim")[1]  # the long tier's test only
    for tier in ("cpu", "long"):
        machine = one_line(MACHINES[tier])
        assert f"Trained on ({LABEL[tier]}): {machine}: 1 run." in text  # the section's
        assert f"Trained on ({LABEL[tier]}): {machine}." in text  # the page's, per tier
    assert f"Setup (long tier): setup long. Claims file (long tier): `long/{FIG1}`." in text
    assert f"Not run (long tier): no `long/{DLN}`." in text
    assert "Not run at the long tier: `make dln` (their CPU tier's verdicts are counted" in text


def test_the_headline_counts_the_long_tier_where_it_has_the_claim(results):
    text = rendered(results)
    specs = {**FIG1_CLAIMS, **DLN_CLAIMS}.values()
    counted = [(s[0], s[2] or s[1]) for s in specs]
    cpu_only = [(s[0], s[1]) for s in specs if s[1]]
    headline = text.split("## Headline")[1].split("\n## ")[0]
    for source in (IOFFE, SANTURKAR, WU):
        assert counts_row(counted, source, source) in headline, source
    # A headline that counted the CPU tier alone would differ: the fixture tells them apart.
    assert counts_row(cpu_only, IOFFE, IOFFE) not in headline
    from_long = sum(s[2] is not None for s in specs)
    assert (f"by its long tier's verdict where the long tier checked it ({from_long} claims), "
            f"else by its CPU tier's ({len(counted) - from_long} claims)") in headline


def test_verdicts_that_change_with_scale_are_listed_old_to_new(results):
    text = rendered(results)
    section = text.split("## Verdicts that change with scale")[1].split("\n## ")[0]
    changed = [line for line in section.splitlines() if line.startswith("- ")]
    assert changed == [f"- fig1: flips with scale ({IOFFE}): holds -> does not hold"]
    both = sum(AGREES[c] != "-" for c in FIG1_CLAIMS)
    assert f"Of the {both} claims both tiers measured, 1 changed verdict" in section


def test_the_long_tiers_figures_come_first_each_captioned_with_its_tier(results):
    text = rendered(results)
    figures = [line for line in text.split("## Fig. 1")[1].split("\n## ")[0].splitlines()
               if line.startswith(("![", "`fig1"))]
    assert figures == ["![fig1_mnist.png](long/fig1_mnist.png)", "`fig1_mnist.png` (long tier)",
                       "![fig1_mnist.png](fig1_mnist.png)", "`fig1_mnist.png` (CPU tier)",
                       "![fig1_mnist_layers.png](fig1_mnist_layers.png)",
                       "`fig1_mnist_layers.png` (CPU tier)"]
    assert (results / "long" / "fig1_mnist.png").is_file()


def test_the_long_tiers_wall_time_is_the_ledgers_sum_and_absent_without_one(tmp_path, results):
    assert "Wall time" not in rendered(results)
    (results / "long" / "reproduce_time.json").write_text(json.dumps(
        {"scale": "long", "seconds": 19800.4, "invocations": 3,
         "parts": {"planning": 600.0, "fig2": 19200.4}, "machines": ["CPU A, 2 cores"]}))
    assert ("Wall time (long tier): 5 h 30 min of `python -m bnrepro.reproduce --scale long` "
            "over 3 invocations (on CPU A, 2 cores); by part: planning 10 min, fig2 5 h 20 min "
            "(`long/reproduce_time.json`).") in rendered(results)
    (results / "long" / "reproduce_time.json").write_text('{"seconds": 3')
    assert ("Wall time (long tier): `long/reproduce_time.json` is unreadable"
            in rendered(results))
