"""trainer.device, trainer.precision and trainer.deterministic (device.py), tested on the
CPU: CUDA's answers are monkeypatched where a test needs a GPU that is not there."""

import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from bnrepro import device
from bnrepro.config import CONF_DIR, compose_config, register_resolvers
from bnrepro.device import DeviceError, resolve_device
from bnrepro.run.store import read_metrics, read_summary
from bnrepro.train import train_population
from bnrepro.validation import config_problems

TINY = ["experiment=fig1_mnist", "debug=smoke", "trainer.max_steps=4", "trainer.eval_every=2",
        "probe.num_examples=20", "dataset.val_size=200", "trainer.test_examples=200"]


@pytest.fixture
def no_cuda(monkeypatch):
    """CUDA unusable, as with a driver older than torch's CUDA build; notices unsaid."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_said", set())


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cuda_is_refused_in_one_line_when_cuda_is_unusable(no_cuda):
    for name in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match="CUDA is not usable") as err:
            resolve_device(name)
        assert "\n" not in str(err.value) and "trainer.device=cpu" in str(err.value)


def test_auto_says_in_one_line_that_it_trains_on_the_cpu_and_only_once(no_cuda, capsys):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "trainer.device=auto" in lines[0] and "CPU" in lines[0], lines
    assert resolve_device("cpu") == torch.device("cpu")  # asked for: said nothing
    assert capsys.readouterr().err == ""


def test_cuda_n_is_taken_when_that_gpu_exists_and_refused_when_not(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(DeviceError, match=r"sees 2 GPUs \(cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_validation_takes_cuda_n_and_refuses_other_devices_and_precisions():
    def problems(*overrides):
        return config_problems(compose_config(["experiment=fig1_mnist", *overrides]))

    assert problems("trainer.device=cuda:1", "trainer.precision=bf16") == []
    for override, key in (("trainer.device=tpu", "trainer.device"),
                          ("trainer.device=cuda:x", "trainer.device"),
                          ("trainer.precision=fp16", "trainer.precision"),
                          ("trainer.deterministic=maybe", "trainer.deterministic")):
        found = problems(override)
        assert len(found) == 1 and found[0].startswith(f"{key}="), found


def test_a_run_asking_for_cuda_without_it_fails_with_one_error_line(run_train, tmp_path,
                                                                   mirror):
    """This process and its subprocesses see no GPU (tests/conftest.py's pin)."""
    result = run_train(*TINY, "trainer.device=cuda", f"hydra.run.dir={tmp_path}", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "CUDA is not usable" in errors[0] and "Traceback" not in result.stderr
    assert read_summary(tmp_path) is None  # refused before anything was written


def test_the_summary_records_precision_determinism_and_versions_and_tf32_changes_no_cpu_float(
        tmp_path, mirror):
    runs = {}
    for precision in ("ieee", "tf32", "bf16"):
        cfg = compose_config([*TINY, "trainer.device=cpu", f"trainer.precision={precision}"])
        summary = train_population([cfg], [tmp_path / precision])[0]
        recorded = summary["machine"]
        assert recorded["precision"] == precision and recorded["deterministic"] is True
        assert recorded["cuda"] == str(torch.version.cuda or "none")
        assert recorded["cudnn"] == str(torch.backends.cudnn.version() or "none")
        assert read_summary(tmp_path / precision)["machine"] == recorded
        runs[precision] = read_metrics(tmp_path / precision)
    assert runs["tf32"] == runs["ieee"]  # no TF32 on a CPU: the same floats
    assert runs["bf16"] != runs["ieee"]  # bf16 autocasts (on the CPU too)


def test_tests_see_no_gpu_here_or_in_their_subprocesses():
    """tests/conftest.py hides the GPUs unless BNREPRO_TEST_GPU=1 (make gpu-check)."""
    if os.environ.get("BNREPRO_TEST_GPU") == "1":
        pytest.skip("BNREPRO_TEST_GPU=1 shows the GPUs on purpose")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not torch.cuda.is_available()
    assert compose_config(["experiment=fig1_mnist"]).trainer.device == "auto"
    seen = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert seen == "0"


def test_the_local_launcher_asks_for_the_visible_gpus_and_passes_which_ones(two_gpus,
                                                                         monkeypatch):
    from hydra.utils import instantiate

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True,
                      overrides=["experiment=fig1_mnist", "hydra/launcher=population_local"])
    assert cfg.hydra.launcher.gpus_per_node == 2
    executor = instantiate(cfg.hydra.launcher).submitit_executor()._executor
    assert executor.parameters["gpus_per_node"] == 2
    assert tuple(executor.parameters["visible_gpus"]) == (3, 5)


@pytest.mark.gpu
def test_on_a_gpu_the_numerics_are_set_as_asked_and_reset_by_the_next_run():
    cuda = resolve_device("cuda")
    recorded = device.configure(cuda, "tf32", False)
    assert recorded["matmul_fp32"] == recorded["conv_fp32"] == "tf32"
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    recorded = device.configure(cuda)
    assert recorded["matmul_fp32"] == recorded["conv_fp32"] == "ieee"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.gpu
def test_a_cuda_run_records_its_gpu_and_numerics_and_evaluates_there(tmp_path, mirror):
    summary = train_population([compose_config([*TINY, "trainer.device=cuda"])],
                               [tmp_path / "run"])[0]
    recorded = summary["machine"]
    assert summary["status"] == "completed"
    assert recorded["gpu"] == torch.cuda.get_device_name() and recorded["precision"] == "ieee"
    assert recorded["matmul_fp32"] == "ieee" and recorded["cudnn_deterministic"] is True
    assert any(key.startswith("act/h1/") for key in read_metrics(tmp_path / "run")[-1])


@pytest.mark.gpu
def test_probes_on_the_gpu_give_the_cpus_numbers():
    from bnrepro.measures.probes import sigmoid_input_quantiles

    h = [torch.randn(3, 50, 8, generator=torch.Generator().manual_seed(0))]
    on_cpu = sigmoid_input_quantiles(h, 2, [0.15, 0.5, 0.85])
    on_gpu = sigmoid_input_quantiles([t.cuda() for t in h], 2, [0.15, 0.5, 0.85])
    for cpu_row, gpu_row in zip(on_cpu, on_gpu, strict=True):
        assert cpu_row.keys() == gpu_row.keys()
        for key, value in cpu_row.items():
            assert gpu_row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
