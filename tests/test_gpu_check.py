"""`make gpu-check` (bnrepro.gpu_check): its plumbing on the CPU. The check itself needs a GPU;
`--device cpu` runs every section tiny, so none of it is dead code here."""

import sys

import pytest

from bnrepro import gpu_check

SECTION_TITLES = [s.title for s in gpu_check.SECTIONS.values()]


def sections_of(report: str) -> dict[str, str]:
    """'## <title>: <status>' headings -> {title: status}."""
    return dict(line[3:].rsplit(": ", 1) for line in report.splitlines()
                if line.startswith("## "))


def test_a_section_that_fails_crashes_or_overruns_is_recorded_and_the_rest_still_report(
        tmp_path):
    said = ('import json, sys; open(sys.argv[1], "w").write(json.dumps({"status": "ok", '
            '"lines": ["- got this far"]}))')
    crash = [sys.executable, "-c", f"{said}; import os; os._exit(3)", str(tmp_path / "c.json")]
    hang = [sys.executable, "-c", f"{said}; import time; time.sleep(60)", str(tmp_path / "h.json")]
    crashed = gpu_check.run_section("resume", crash, 30, tmp_path / "c.json")
    hung = gpu_check.run_section("twice", hang, 3, tmp_path / "h.json")
    assert crashed.status == "failed" and crashed.lines[0] == "- got this far"
    assert "exit 3" in crashed.lines[-1]
    assert hung.status == "timed out" and hung.lines[0] == "- got this far"
    assert hung.seconds < 30
    report = gpu_check.report([crashed, hung], "cpu", 1.0)
    assert sections_of(report) == {gpu_check.SECTIONS["resume"].title: "failed",
                                   gpu_check.SECTIONS["twice"].title: "timed out"}


def test_a_section_that_raises_says_why_in_the_report(tmp_path, monkeypatch):
    def broken(ctx):
        ctx.say("- first line")
        raise gpu_check.CheckFailed("the bytes differ")

    monkeypatch.setitem(gpu_check.SECTIONS, "twice", gpu_check.Section("Twice", broken))
    ctx = gpu_check.Context("cpu", tmp_path, tmp_path / "r.json")
    assert gpu_check.section_main("twice", ctx) == 1
    saved = (tmp_path / "r.json").read_text()
    assert '"failed"' in saved and "first line" in saved and "the bytes differ" in saved


def test_cpu_mode_writes_one_report_with_each_chosen_section(tmp_path, mirror):
    out = tmp_path / "gpu_check.md"
    status = gpu_check.main(["--device", "cpu", "--only", "versions", "resume", "syncs",
                             "--work", str(tmp_path / "work"), "--out", str(out)])
    found = sections_of(out.read_text())
    assert found == {gpu_check.SECTIONS["versions"].title: "ok",
                     gpu_check.SECTIONS["resume"].title: "ok",
                     gpu_check.SECTIONS["syncs"].title: "skipped"}, out.read_text()
    assert status == 0 and "precision=bf16" in out.read_text()


@pytest.mark.slow
def test_cpu_mode_runs_every_section(tmp_path, mirror):
    """Every section, tiny, on the CPU (about 5 minutes on 2 cores)."""
    out = tmp_path / "gpu_check.md"
    gpu_check.main(["--device", "cpu", "--work", str(tmp_path / "work"), "--out", str(out)])
    found = sections_of(out.read_text())
    assert list(found) == SECTION_TITLES
    assert {title: status for title, status in found.items() if status != "ok"} == \
        {gpu_check.SECTIONS["syncs"].title: "skipped"}, out.read_text()
