"""The tier's wall-time ledger (bnrepro.run.ledger): every invocation's seconds count, per part,
a killed one up to its last tick, and the sum is what the report states."""

from __future__ import annotations

import json

import pytest

from bnrepro.run.ledger import Ledger, duration, read, total


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_each_tick_charges_the_seconds_since_the_last_to_the_part_under_way(tmp_path):
    clock = FakeClock()
    ledger = Ledger(tmp_path / "time.json", "cpu A", clock)
    clock.now = 30.0
    ledger.tick("planning")
    clock.now = 100.0
    ledger.tick("fig2")
    clock.now = 250.0
    ledger.close("fig2", "done")
    [entry] = read(tmp_path / "time.json")
    assert entry["parts"] == {"planning": 30.0, "fig2": 220.0}
    assert entry["seconds"] == 250.0 and entry["status"] == "done"


def test_invocations_add_up_and_a_killed_one_counts_until_its_last_tick(tmp_path):
    path, clock = tmp_path / "time.json", FakeClock()
    killed = Ledger(path, "cpu A", clock)
    clock.now = 60.0
    killed.tick("fig2")
    clock.now = 90.0  # killed here: no tick, no close; the file holds the count at 60 s
    clock.now = 0.0
    rerun = Ledger(path, "cpu B", clock)
    clock.now = 40.0
    rerun.close("fig2", "done")
    entries = read(path)
    assert [e["status"] for e in entries] == ["running", "done"]
    spent = total(entries)
    assert spent.seconds == 100.0 and spent.invocations == 2
    assert spent.parts == {"fig2": 100.0} and spent.machines == ["cpu A", "cpu B"]
    assert rerun.total() == spent


def test_a_file_that_is_not_a_ledger_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "time.json"
    path.write_text(json.dumps({"seconds": 3}))
    with pytest.raises(ValueError, match="not a time ledger.*move it aside"):
        Ledger(path, "cpu", FakeClock())
    path.write_text("{cut sh")
    with pytest.raises(ValueError, match="not a time ledger"):
        read(path)


@pytest.mark.parametrize("seconds, shown", [(40, "40 s"), (720, "12 min"),
                                            (3900, "1 h 05 min"), (21599, "6 h 00 min")])
def test_duration_reads_as_hours_and_minutes(seconds, shown):
    assert duration(seconds) == shown
