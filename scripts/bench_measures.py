"""What one call of each measure (bnrepro.measures) costs, in training steps of the same net.

For each setting (the Fig. 1 MLP at P = 1 and 3, the quick CIFAR CNN at width 0.5), this
builds the model and optimizer as the trainer does, then times on the same batch: a training
step (forward, backward, update) and, at a step, each measure with the default knobs of
conf/measures (ICS of every layer; the landscape at 8 points). Inputs are random tensors of
the dataset's shape (the cost does not depend on the pixel values), so no data is loaded.
Each time is the median of --repeats calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from bnrepro.config import compose_config
from bnrepro.measures.hook import StepMeasures
from bnrepro.models import build_model
from bnrepro.optim import PopulationSGD
from bnrepro.train import member_losses

SETTINGS = {  # label -> (overrides, population size, input image shape)
    "MNIST MLP (fig1), P=1": (["experiment=fig1_mnist"], 1, (1, 28, 28)),
    "MNIST MLP (fig1), P=3": (["experiment=fig1_mnist"], 3, (1, 28, 28)),
    "CIFAR CNN quick, width 0.5, P=1": (["experiment=fig2_cifar", "fig2_variant=bn_baseline"],
                                        1, (3, 32, 32)),
}


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def bench(overrides: list[str], population: int, shape: tuple[int, ...], repeats: int
          ) -> dict[str, float]:
    cfgs = [compose_config([*overrides, f"seed={k}"]) for k in range(population)]
    cfg = cfgs[0]
    model = build_model(cfgs, shape).train()
    lr = torch.tensor([float(c.optim.lr) for c in cfgs])
    optimizer = PopulationSGD(model.parameters(), lr, torch.tensor([c.optim.momentum
                                                                    for c in cfgs]),
                              torch.tensor([c.optim.weight_decay for c in cfgs]))
    x = torch.randn(population, cfg.trainer.batch_size, *shape)
    y = torch.randint(0, 10, (population, cfg.trainer.batch_size))
    alive = torch.ones(population, dtype=torch.bool)

    def train_step() -> torch.Tensor:
        loss = member_losses(model(x), y)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step(alive)
        return loss

    result = {"train_step_ms": median_ms(train_step, repeats)}
    defaults = OmegaConf.to_container(compose_config([]).measures)
    for name in defaults:
        knobs = {name: {**defaults[name], "every": 1}}
        measures = StepMeasures(knobs, model, optimizer, member_losses)
        replay = measures.capture(1)
        loss = member_losses(model(x), y)
        optimizer.zero_grad()
        loss.sum().backward()
        result[f"{name}_ms"] = median_ms(
            lambda m=measures, r=replay, lo=loss: m.measure(1, r, x, y, lo, alive), repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                        "torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} threads; median of {args.repeats} calls")
    print(f"{'setting':<34}{'step ms':>9}{'ics ms':>9}{'(steps)':>9}{'landscape ms':>14}"
          f"{'(steps)':>9}")
    for label, (overrides, population, shape) in SETTINGS.items():
        r = bench(overrides, population, shape, args.repeats)
        step = r["train_step_ms"]
        print(f"{label:<34}{step:>9.2f}{r['ics_ms']:>9.2f}{r['ics_ms'] / step:>9.1f}"
              f"{r['landscape_ms']:>14.2f}{r['landscape_ms'] / step:>9.1f}")


if __name__ == "__main__":
    main()
