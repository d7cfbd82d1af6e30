"""The wandb sink, on real wandb in offline mode: one run directory is one wandb run, and a
resume from step s tells wandb to drop what the interrupted process logged after s.

What wandb wrote is read back from its offline transaction log (offline-run-*/run-<id>.wandb):
a leveldb-style log of protobuf Records, the file `wandb sync` uploads.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import wandb
from wandb.proto import wandb_internal_pb2 as pb

from bnrepro.config import compose_config
from bnrepro.run.loggers import WandbSink, wandb_run_id
from tests.wandb_offline import offline_runs, run_record

VALID_WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def make_sink(run_dir: Path, mode: str = "offline", resume_step: int | None = None) -> WandbSink:
    cfg = compose_config(["logger=wandb", f"logger.mode={mode}"])
    # The same name for every directory: ids must come from the directory, not the name.
    return WandbSink(cfg.logger, cfg, run_dir, "mnist-bn-sigmoid", "test", ["norm=bn"],
                     resume_step=resume_step)


def history_steps(records: list[pb.Record]) -> list[int]:
    return [r.history.step.num for r in records if r.WhichOneof("record_type") == "history"]


def test_every_start_of_a_run_directory_gets_the_same_wandb_id(tmp_path, monkeypatch):
    ids = []
    for _ in range(2):
        sink = make_sink(tmp_path / "a")
        ids.append(sink.run.id)
        sink.finish()
    other = make_sink(tmp_path / "b")
    other.finish()
    monkeypatch.chdir(tmp_path)  # a relative path names the same directory, so the same run
    assert ids[0] == ids[1] == wandb_run_id(tmp_path / "a") == wandb_run_id(Path("a"))
    assert other.run_id != ids[0]
    for run_id in (ids[0], other.run_id):
        assert VALID_WANDB_ID.fullmatch(run_id), run_id


def test_a_resumed_offline_run_continues_its_wandb_run_from_the_checkpoint(tmp_path):
    first = make_sink(tmp_path)
    for step in (0, 20, 40, 60):  # killed after step 60; its last checkpoint was at 40
        first.log({"step": step, "test/acc": step / 100}, step=step)
    first.finish()
    resumed = make_sink(tmp_path, resume_step=40)
    assert resumed.run.starting_step == 41  # wandb itself skips anything logged at <= 40
    for step in (60, 80):
        resumed.log({"step": step, "test/acc": step / 100}, step=step)
    resumed.finish({"status": "completed"})

    (folder1, records1), (folder2, records2) = offline_runs(tmp_path)
    run_id = wandb_run_id(tmp_path)
    for folder, records in ((folder1, records1), (folder2, records2)):
        # wandb suffixes "-1" when a restart falls in the same second as the previous start
        assert re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", folder.name), folder
        assert (folder / f"run-{run_id}.wandb").is_file()
        assert run_record(records).run_id == run_id
    assert not run_record(records1).branch_point.run  # a fresh start rewinds nothing
    # The resume is recorded as a rewind of this very run to the checkpoint step: what
    # `wandb sync` replays against the server before uploading steps 60 and 80 again.
    point = run_record(records2).branch_point
    assert (point.run, point.metric, point.value) == (run_id, "_step", 40)
    assert history_steps(records1) == [0, 20, 40, 60]
    assert history_steps(records2) == [60, 80]


def test_step_is_the_x_axis_accuracy_summaries_the_max_and_loss_summaries_the_min(tmp_path):
    sink = make_sink(tmp_path)
    sink.finish()
    (_, records), = offline_runs(tmp_path)
    metrics = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
    assert any(m.glob_name == "*" and m.step_metric == "step" for m in metrics)
    for key in ("train/acc", "val/acc", "test/acc", "test/acc_batch", "test/acc_running"):
        assert any(m.name == key and m.step_metric == "step" and m.summary.max
                   and not m.summary.min for m in metrics), key
    for key in ("train/loss", "val/loss", "test/loss"):
        assert any(m.name == key and m.step_metric == "step" and m.summary.min
                   and not m.summary.max for m in metrics), key


@pytest.mark.parametrize("resume_step", [None, 40])
def test_unusable_wandb_gives_one_warning_and_never_raises(tmp_path, monkeypatch, resume_step):
    """Online with no API key: wandb.init fails for real, the rewind and its fallback too."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no stored login either
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink = make_sink(tmp_path / "run", mode="online", resume_step=resume_step)
        sink.log({"step": 60, "test/acc": 0.5}, step=60)
        sink.finish({"status": "completed"})
    ours = [w for w in caught if "wandb" in str(w.message) and "local run store" in str(w.message)]
    assert len(ours) == 1 and "wandb disabled for this run" in str(ours[0].message), \
        [str(w.message) for w in ours]
    assert sink.run is None


def test_a_refused_rewind_continues_the_run_with_one_warning(tmp_path, monkeypatch):
    """What an online server without the run (or without rewind) does: wandb.init raises."""
    real_init = wandb.init

    def init_refusing_rewinds(**kwargs):
        if "resume_from" in kwargs:
            raise wandb.errors.CommError("failed to rewind run: run not found")
        return real_init(**kwargs)

    monkeypatch.setattr(wandb, "init", init_refusing_rewinds)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sink = make_sink(tmp_path, resume_step=40)
        sink.log({"step": 60, "test/acc": 0.5}, step=60)
        sink.finish()
    ours = [str(w.message) for w in caught if "local run store" in str(w.message)]
    assert len(ours) == 1 and "could not rewind" in ours[0] and "run not found" in ours[0], ours
    (_, records), = offline_runs(tmp_path)
    run = run_record(records)
    assert run.run_id == wandb_run_id(tmp_path) and run.resume  # resume="allow"
    assert history_steps(records) == [60]
