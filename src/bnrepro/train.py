"""Training, top to bottom. `python -m bnrepro.train experiment=fig1_mnist`.

One process trains a population of P configurations that share an architecture (P = 1 for an
ordinary run): every tensor has a leading member dimension, and each member has its own seed,
learning rate, momentum, weight decay, dropout, data order and run directory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from tqdm import tqdm

from bnrepro.data import InputTransform, fixed_subset, load_dataset
from bnrepro.loggers import make_sink
from bnrepro.models import MLP
from bnrepro.norm import bn_mode, estimate_population_statistics
from bnrepro.optim import PopulationSGD
from bnrepro.probes import sigmoid_input_quantiles
from bnrepro.seeding import generator
from bnrepro.store import RunStore

# Keys that may differ between members of one population; everything else must match.
MEMBER_KEYS = ("seed", "optim.lr", "optim.momentum", "optim.weight_decay", "model.dropout")
EVAL_CHUNK = 5000  # examples per forward pass in evaluation: bounds memory for large P


def axes(cfg: DictConfig) -> dict:
    """The sweep axes of a run, as recorded in summary.json and sent to wandb."""
    return {"dataset": cfg.dataset.name, "norm": cfg.model.norm,
            "activation": cfg.model.activation, "lr": cfg.optim.lr,
            "dropout": cfg.model.dropout, "seed": cfg.seed}


def run_name(cfg: DictConfig) -> str:
    a = axes(cfg)
    return (f"{a['dataset']}-{a['norm']}-{a['activation']}-lr{a['lr']:g}"
            f"-do{a['dropout']:g}-s{a['seed']}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class EpochSampler:
    """Per member, a fresh permutation of the training set every epoch, cut into batches.

    The last partial batch of an epoch is dropped, so every step sees exactly batch_size.
    """

    def __init__(self, num_examples: int, batch_size: int, seeds: Sequence[int]):
        self.num_examples, self.batch_size = num_examples, batch_size
        self.steps_per_epoch = num_examples // batch_size
        self.generators = [generator(s, "data") for s in seeds]
        self.step = 0
        self.order: torch.Tensor | None = None

    def next(self) -> torch.Tensor:
        """Indices [P, batch_size] for the next step."""
        position = self.step % self.steps_per_epoch
        if position == 0:
            self.order = torch.stack([torch.randperm(self.num_examples, generator=g)
                                      for g in self.generators])
        self.step += 1
        return self.order[:, position * self.batch_size:(position + 1) * self.batch_size]


def build_model(cfgs: Sequence[DictConfig], in_features: int, num_classes: int) -> MLP:
    m = cfgs[0].model
    if m.kind != "mlp":
        raise ValueError(f"model.kind must be 'mlp', got {m.kind!r}")
    return MLP([c.seed for c in cfgs], in_features, list(m.hidden), num_classes, m.norm,
               m.activation, [c.model.dropout for c in cfgs], m.init_std, m.bn_eps,
               m.bn_momentum, m.bn_inference)


@torch.no_grad()
def evaluate(model: MLP, x: torch.Tensor, y: torch.Tensor, chunk: int = EVAL_CHUNK):
    """Mean cross-entropy and accuracy per member on (x, y), fed to every member."""
    loss_sum = correct = 0
    for start in range(0, len(x), chunk):
        logits = model(x[start:start + chunk], shared=True)  # [P, n, C]
        target = y[start:start + chunk].expand(logits.shape[0], -1)
        loss_sum = loss_sum + F.cross_entropy(logits.transpose(1, 2), target,
                                              reduction="none").sum(1)
        correct = correct + (logits.argmax(-1) == target).sum(1)
    return (loss_sum / len(x)).tolist(), [c / len(x) for c in correct.tolist()]


def train_population(cfgs: Sequence[DictConfig], run_dirs: Sequence[Path]) -> list[dict]:
    """Train every config in `cfgs` (one shared architecture) and return their summaries."""
    cfg, P = cfgs[0], len(cfgs)
    start_time = time.time()
    device = resolve_device(cfg.trainer.device)
    ds = load_dataset(cfg.dataset.name, to_absolute_path(cfg.dataset.root), cfg.dataset.mirror)
    transform = InputTransform(ds, cfg.dataset.binarize, cfg.dataset.standardize)
    ds = ds.to(device)
    batch_size, max_steps = cfg.trainer.batch_size, cfg.trainer.max_steps

    model = build_model(cfgs, math.prod(ds.image_shape), 10).to(device)
    per_member = {key: torch.tensor([float(c.optim[key]) for c in cfgs], device=device)
                  for key in ("lr", "momentum", "weight_decay")}
    optimizer = PopulationSGD(model.parameters(), **per_member)
    sampler = EpochSampler(len(ds.train_labels), batch_size, [c.seed for c in cfgs])

    # Fixed inputs, prepared once: the test set, the probe batch (the same examples at every
    # evaluation), and the training batches for Alg. 2's population statistics.
    test_x = transform(ds.test_images)
    probe_x = test_x[fixed_subset(len(test_x), cfg.probe.num_examples).to(device)]
    population_x = transform(ds.train_images[fixed_subset(
        len(ds.train_labels), cfg.trainer.population_batches * batch_size).to(device)])

    stores = [RunStore(d, c) for d, c in zip(run_dirs, cfgs, strict=True)]
    sinks = [make_sink(c, d, run_name(c), c.logger.get("group") or c.name,
                       [f"{k}={v}" for k, v in axes(c).items()])
             for c, d in zip(cfgs, run_dirs, strict=True)]
    summaries = [{"status": "running", "reason": None, "steps_done": 0, "max_steps": max_steps,
                  "final_test_acc": None, "best_test_acc": None, "best_step": None,
                  "final_train_loss": None, "diverged_at_step": None, "wall_time_s": None,
                  "train_time_s": None,
                  "population_size": P, "axes": axes(c)} for c in cfgs]
    for store, summary in zip(stores, summaries, strict=True):
        store.write_summary(summary)

    alive = torch.ones(P, dtype=torch.bool, device=device)
    loss_sum = torch.zeros(P, device=device)
    correct_sum = torch.zeros(P, device=device)
    steps_since_eval = 0

    seconds = {"eval": 0.0, "loop_start": 0.0}

    def log_evaluation(step: int) -> str:
        eval_start = time.perf_counter()
        model.eval()
        if cfg.model.norm == "bn" and cfg.model.bn_inference == "population":
            chunk = max(1, EVAL_CHUNK // batch_size) * batch_size  # whole mini-batches
            estimate_population_statistics(model, population_x.split(chunk), batch_size,
                                           lambda x: model(x, shared=True))
        with bn_mode(model, "eval"):
            test_loss, test_acc = evaluate(model, test_x, ds.test_labels)
        preactivations: list[torch.Tensor] = []
        with bn_mode(model, "batch"), torch.no_grad():  # the training network N_BN^tr
            model(probe_x, preactivations, shared=True)
        probes = sigmoid_input_quantiles(preactivations, cfg.probe.unit, cfg.probe.quantiles)
        model.train()
        train_loss = (loss_sum / max(steps_since_eval, 1)).tolist()
        train_acc = (correct_sum / max(steps_since_eval, 1)).tolist()
        for k in range(P):
            if not alive[k]:
                continue
            row = {"step": step, "test/loss": test_loss[k], "test/acc": test_acc[k], **probes[k]}
            if steps_since_eval:
                row |= {"train/loss": train_loss[k], "train/acc": train_acc[k]}
                summaries[k]["final_train_loss"] = train_loss[k]
            stores[k].log(row)
            sinks[k].log(row, step=step)
            s = summaries[k]
            s["steps_done"], s["final_test_acc"] = step, test_acc[k]
            if s["best_test_acc"] is None or test_acc[k] > s["best_test_acc"]:
                s["best_test_acc"], s["best_step"] = test_acc[k], step
        seconds["eval"] += time.perf_counter() - eval_start
        best = max(range(P), key=lambda k: test_acc[k] if alive[k] else -1)
        return f"loss={train_loss[best]:.3f} test_acc={test_acc[best]:.4f}" + \
            (f" (best of {int(alive.sum())})" if P > 1 else "")

    status, reason = "completed", None
    try:
        progress = tqdm(range(1, max_steps + 1), desc=cfg.name, unit="step", dynamic_ncols=True,
                        disable=None if cfg.trainer.progress else True)
        progress.set_postfix_str(log_evaluation(0))
        model.train()
        seconds |= {"eval": 0.0, "loop_start": time.perf_counter()}
        for step in progress:
            index = sampler.next().to(device)
            x, y = transform(ds.train_images[index]), ds.train_labels[index]
            logits = model(x)
            loss = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
            diverged = alive & ~(loss.detach() <= cfg.trainer.divergence_loss)  # NaN too
            if diverged.any():  # freeze those members before their update; the rest go on
                for k in diverged.nonzero().flatten().tolist():
                    summaries[k] |= {"status": "diverged", "diverged_at_step": step,
                                     "reason": f"train loss {loss[k].item():.4g} at step {step}"
                                               f" (bound {cfg.trainer.divergence_loss})"}
                alive &= ~diverged
                if not alive.any():
                    break
            optimizer.zero_grad()
            torch.where(alive, loss, 0.0).sum().backward()
            optimizer.step(alive)
            loss_sum += loss.detach()
            correct_sum += (logits.detach().argmax(-1) == y).float().mean(1)
            steps_since_eval += 1
            if step % cfg.trainer.eval_every == 0 or step == max_steps:
                progress.set_postfix_str(log_evaluation(step))
                loss_sum.zero_()
                correct_sum.zero_()
                steps_since_eval = 0
    except BaseException as err:  # record why, keep what was logged, then let it propagate
        status, reason = ("interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                          f"{type(err).__name__}: {err}")
        raise
    finally:
        for k in range(P):
            s = summaries[k]
            if s["status"] == "running":
                s["status"], s["reason"] = status, reason
            s["wall_time_s"] = round(time.time() - start_time, 2)
            if seconds["loop_start"]:  # training steps alone: no set-up, no evaluation
                s["train_time_s"] = round(time.perf_counter() - seconds["loop_start"]
                                          - seconds["eval"], 3)
            stores[k].write_summary(s)
            stores[k].close()
            sinks[k].finish(s)
    return summaries


@hydra.main(config_path="../../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = train_population([cfg], [run_dir])[0]
    return summary["final_test_acc"]  # the objective a Hydra sweeper would read


if __name__ == "__main__":
    main()
