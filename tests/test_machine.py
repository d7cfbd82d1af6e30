"""Every run records the machine that trained it (its floats depend on the CPU and threads)."""

import torch

from bnrepro.run import machine
from bnrepro.run.store import read_summary


def test_a_run_records_the_cpu_and_the_threads_it_trained_with(run_train, tmp_path, mirror):
    # More threads than torch's default, so a summary written outside trainer.threads (or
    # one that reads the process default) records another count and fails.
    threads = machine.cores() + 1
    run_train("experiment=fig1_mnist", "debug=smoke", f"trainer.threads={threads}",
              f"hydra.run.dir={tmp_path}")
    recorded = read_summary(tmp_path)["machine"]
    assert recorded["threads"] == threads
    assert recorded["cpu"] == machine.cpu_model()
    assert recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert recorded["torch"] == torch.__version__ and recorded["gpu"] == "none"
    # The summary travels in the checkpoint, which torch.load(weights_only=True) reads back:
    # the same command again finds the run finished (a torch.__version__ object in it made
    # the checkpoint unreadable: renamed *.corrupt and the run retrained)
    again = run_train("experiment=fig1_mnist", "debug=smoke", f"trainer.threads={threads}",
                      f"hydra.run.dir={tmp_path}")
    assert not list(tmp_path.glob("*.corrupt")) and "corrupt" not in again.stderr
    assert read_summary(tmp_path)["machine"] == recorded


def test_the_record_holds_plain_values_only():
    assert {type(v) for v in machine.describe().values()} <= {str, int}


def test_trained_on_counts_runs_per_machine_most_first():
    a = {"cpu": "CPU A", "cpu_capability": "AVX2", "threads": 2, "cores": 2, "gpu": "none",
         "torch": "2.15.0"}
    b = dict(a, cpu_capability="AVX512")
    summaries = [{"machine": b}, {"machine": a}, {"machine": b}, {}]
    assert machine.trained_on(summaries) == [
        "CPU A (AVX512), 2 threads of 2 cores, torch 2.15.0: 2 runs",
        "CPU A (AVX2), 2 threads of 2 cores, torch 2.15.0: 1 run",
        "not recorded: 1 run"]
    gpu = machine.one_line(dict(a, gpu="NVIDIA H200"))
    assert gpu.startswith("GPU NVIDIA H200 with CPU A (AVX2)")
