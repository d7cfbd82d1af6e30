"""What a PyTorch user would write to train the bench's nets, one function per peer.

Each function sets a peer up (untimed) and returns its sample function (timing.stepper): one
call of the step it returns is one training step of every model it trains. All peers use
torch.optim.SGD with the workload's rate, momentum and weight decay, and draw their batches by
indexing the workload's uint8 tensors (but the tutorial loop, which is defined by its
torchvision pipeline).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bnrepro.bench.timing import stepper, time_calls
from bnrepro.bench.workloads import IndexStream, Workload, mlp_workload

Sample = Callable[[int, int], float]


def _sgd(w: Workload, params) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=w.lr, momentum=w.momentum, weight_decay=w.weight_decay,
                           foreach=True)


def _plain_step(w: Workload, model: nn.Module, channels_last: bool = False,
                forward: Callable | None = None) -> Callable[[], None]:
    """One step of the loop a user writes with data in memory: index a batch of uint8 images,
    convert, forward, cross-entropy, backward, SGD."""
    forward = forward or model
    optimizer = _sgd(w, model.parameters())
    stream = IndexStream(len(w.labels), w.batch_size, 1, w.device)

    def step() -> None:
        index = stream.next()[0]
        x = w.inputs(w.images[index])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(forward(x), w.labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def plain_loop(w: Workload, channels_last: bool = False) -> Sample:
    """nn.Sequential + torch.optim.SGD(foreach=True), batches by indexing uint8 tensors."""
    model = w.build()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return stepper(_plain_step(w, model, channels_last), 1, w.device)


def compiled_loop(w: Workload, extra: dict) -> Sample:
    """The plain loop with torch.compile(model) (default mode; the optimizer step stays
    eager). Compiling happens here, in set-up: its seconds go to extra["compile_s"], not into
    the step time. Raises what torch.compile raises where it cannot compile."""
    model = w.build()
    step = _plain_step(w, model, forward=torch.compile(model))
    extra["compile_s"] = round(time_calls(step, 2, w.device), 1)  # forward and backward graphs
    return stepper(step, 1, w.device)


def ensemble_step(w: Workload, models: list[nn.Module]
                  ) -> tuple[Callable[[torch.Tensor], None], dict[str, torch.Tensor]]:
    """PyTorch's "model ensembling" tutorial, trained: the models' parameters and buffers
    stacked (torch.func.stack_module_state), one vmap over functional_call for the forward
    pass (BN's running statistics update per member), one backward through the stacked
    parameters, torch.optim.SGD(foreach=True) on them. Returns step(index [P, B]), each member
    on its own batch, and the stacked parameters."""
    from torch.func import functional_call, stack_module_state, vmap

    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def one_model(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (x,))

    forward = vmap(one_model)
    optimizer = _sgd(w, list(params.values()))
    P = len(models)

    def step(index: torch.Tensor) -> None:
        logits = forward(params, buffers, w.inputs(w.images[index]))  # [P, B, K]
        # P x the mean over all P*B examples: the sum of the members' mean losses, so each
        # member gets exactly its own gradient
        loss = F.cross_entropy(logits.flatten(0, 1), w.labels[index].flatten()) * P
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, params


def func_ensemble(w: Workload, population_size: int) -> Sample:
    """The torch.func ensemble (ensemble_step) of P fresh nets, each on its own batches."""
    step, _ = ensemble_step(w, [w.build() for _ in range(population_size)])
    stream = IndexStream(len(w.labels), w.batch_size, population_size, w.device)
    return stepper(lambda: step(stream.next()), population_size, w.device)


def members_one_after_another(w: Workload, population_size: int) -> Sample:
    """P plain loops, each member's warm-up and timed steps run to the end before the next
    member starts: training a population's members one at a time."""
    steps = [_plain_step(w, w.build()) for _ in range(population_size)]

    def sample(warmup: int, timed: int) -> float:
        seconds = 0.0
        for step in steps:
            for _ in range(warmup):
                step()
            seconds += time_calls(step, timed, w.device)
        return seconds / timed / population_size * 1000

    return sample


def _write_idx(tensor: torch.Tensor, path: Path) -> None:
    """A uint8 tensor as an IDX file, the format torchvision's MNIST reads."""
    header = (0x08 << 8 | tensor.dim()).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    path.write_bytes(header + tensor.contiguous().numpy().tobytes())


def tutorial_loop(w: Workload) -> Sample:
    """The loop of a PyTorch tutorial for Fig. 1's net: torchvision's MNIST dataset with
    ToTensor and a binarising Lambda transform, DataLoader(batch_size, shuffle=True) in the
    main process, torch.optim.SGD with its defaults."""
    import torchvision
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    ds = w.dataset.to("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for prefix, images, labels in (("train", ds.train_images, ds.train_labels),
                                       ("t10k", ds.test_images, ds.test_labels)):
            _write_idx(images.squeeze(1), raw / f"{prefix}-images-idx3-ubyte")
            _write_idx(labels.to(torch.uint8), raw / f"{prefix}-labels-idx1-ubyte")
        binary = T.Compose([T.ToTensor(), T.Lambda(lambda x: (x >= 0.5).float())])
        train = torchvision.datasets.MNIST(tmp, train=True, transform=binary)  # reads it all
    loader = DataLoader(train, batch_size=w.batch_size, shuffle=True, drop_last=True)
    batches = (batch for _ in count() for batch in loader)  # epoch after epoch, reshuffled
    model = w.build()
    optimizer = torch.optim.SGD(model.parameters(), lr=w.lr)

    def step() -> None:
        x, y = next(batches)
        loss = F.cross_entropy(model(x.to(w.device)), y.to(w.device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return stepper(step, 1, w.device)


# --- one process per member (joblib), the way a Hydra joblib sweep trains a population ---

_WORKER_WORKLOAD: dict[str, Workload] = {}


def _await_all(folder: Path, count: int, timeout_s: float = 300) -> None:
    """A barrier between processes: each leaves a file, then waits for `count` of them."""
    (folder / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout_s
    while len(list(folder.glob("ready-*"))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(folder.glob('ready-*')))} of {count} worker "
                               "processes started")
        time.sleep(0.001)


def _process_worker(root: str, barrier: str, count: int, warmup: int, steps: int) -> float:
    """In a joblib worker: the MLP's plain loop on one thread; seconds for `steps` steps,
    started together with the other workers."""
    torch.set_num_threads(1)
    if "mlp" not in _WORKER_WORKLOAD:  # loky keeps workers between calls: load once
        _WORKER_WORKLOAD["mlp"] = mlp_workload(root, torch.device("cpu"))
    w = _WORKER_WORKLOAD["mlp"]
    step = _plain_step(w, w.build())
    for _ in range(warmup):
        step()
    _await_all(Path(barrier), count)
    return time_calls(step, steps, w.device)


def separate_processes(w: Workload, root: str | Path, processes: int) -> Sample:
    """The plain MLP loop in `processes` joblib (loky) worker processes of one thread each,
    all timed together: a population trained as separate jobs, as many at a time as there
    are cores. ms per model-step = the slowest worker's time / (processes * steps)."""
    from joblib import Parallel, delayed

    if w.device.type != "cpu":
        raise RuntimeError("one process per member is a CPU row")

    def sample(warmup: int, steps: int) -> float:
        with tempfile.TemporaryDirectory() as barrier:
            seconds = Parallel(n_jobs=processes)(
                delayed(_process_worker)(str(Path(root).resolve()), barrier, processes, warmup,
                                         steps) for _ in range(processes))
        return max(seconds) / steps / processes * 1000

    return sample

