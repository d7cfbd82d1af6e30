"""Training, top to bottom. `python -m bnrepro.train experiment=fig1_mnist`.

One process trains a population of P configurations that share an architecture (P = 1 for an
ordinary run): every tensor has a leading member dimension, and each member has its own seed,
learning rate, momentum, weight decay, dropout, data order and run directory.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from bnrepro.atomic import atomic_write_json
from bnrepro.config import flatten, register_resolvers, resolved_without
from bnrepro.data.augment import BatchAugment
from bnrepro.data.datasets import Dataset, InputTransform, load_dataset, rows
from bnrepro.data.sampling import EpochSampler, validation_split
from bnrepro.device import DeviceError, autocast, configure, resolve_device
from bnrepro.measures.evaluation import Evaluator
from bnrepro.measures.hook import StepMeasures
from bnrepro.models import build_model, move_step_streams
from bnrepro.models.compiled import Forward, compiled_forward
from bnrepro.norms import norm_step_setter
from bnrepro.optim import PopulationSGD
from bnrepro.run import checkpoint, machine, runlock
from bnrepro.run.loggers import make_sink
from bnrepro.run.store import RunStore, read_summary
from bnrepro.state import MemberState, ModuleState, SubmoduleStates
from bnrepro.validation import ConfigError, validate

register_resolvers()  # before Hydra composes a config: hydra.run.dir uses them

# Keys that may differ between members of one population; everything else must match.
# `variant` is a label some experiments give their runs (e.g. fig2_cifar's "BN-x5").
# trainer.divergence_check_every when null, off the CPU: how many steps a GPU queues between two
# reads of the members' divergence (a diverged member stays frozen on the device meanwhile).
DEVICE_CHECK_EVERY = 50
MEMBER_KEYS = ("seed", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.lr_decay",
               "optim.lr_decay_steps", "model.dropout", "augment.crop_padding", "augment.flip",
               "variant")


def axes(cfg: DictConfig) -> dict:
    """The sweep axes of a run, as recorded in summary.json and sent to wandb (plus the
    experiment's variant label, where it gives one)."""
    variant = {"variant": cfg.variant} if cfg.get("variant") else {}
    return {"dataset": cfg.dataset.name, **variant, "norm": cfg.model.norm,
            "activation": cfg.model.activation, "lr": cfg.optim.lr,
            "dropout": cfg.model.dropout, "seed": cfg.seed}


def run_name(cfg: DictConfig) -> str:
    a = axes(cfg)
    variant = f"{a['variant']}-" if "variant" in a else ""
    return (f"{a['dataset']}-{variant}{a['norm']}-{a['activation']}-lr{a['lr']:g}"
            f"-do{a['dropout']:g}-s{a['seed']}")


def member_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training loss of each member: mean cross-entropy over its batch, logits [P, B, C]
    and labels [P, B] -> [P]. The measures replay the step's loss with this same function."""
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)


def new_summary(cfg: DictConfig, population_size: int) -> dict:
    """summary.json of a run about to start. Validation accuracy selects (best_val_*), test
    accuracy reports (final_test_acc, and test_acc_at_best_val: the test accuracy of the
    evaluation that validation picks)."""
    return {"status": "running", "reason": None, "steps_done": 0,
            "max_steps": cfg.trainer.max_steps, "final_val_acc": None, "best_val_acc": None,
            "best_val_step": None, "test_acc_at_best_val": None, "final_test_acc": None,
            "final_train_loss": None, "diverged_at_step": None, "resumed_from_step": None,
            "wall_time_s": None, "train_time_s": None, "population_size": population_size,
            "axes": axes(cfg)}


def prepare(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Check a job before anything trains; returns the checkpoint to resume from, if any.

    Raises ConfigError (bad value), ResumeMismatchError (the directory holds another
    config's run) or RunDirectoryBusy (another process trains in it). The caller must hold
    the directory's lock (runlock) from here until training ends.
    """
    validate(cfg)
    if not cfg.trainer.resume:
        return None
    return checkpoint.load(run_dir, cfg)


def train_population(cfgs: Sequence[DictConfig], run_dirs: Sequence[Path],
                     on_step: Callable[[int], None] | None = None) -> list[dict]:
    """Train every config in `cfgs` (one shared architecture); return their summaries.

    Each run directory is held by this process while it trains (runlock). A directory with a
    committed checkpoint is resumed (trainer.resume); a finished run is not trained again,
    only its summary.json restored if a kill left it stale. Members resuming from different
    steps train separately; diverged members resume with their population, frozen, so the
    survivors' arithmetic is the same as in an uninterrupted run.
    `on_step(step)`, when given, is called after each step's update, before any evaluation of
    that step (`make bench` times the steps between two calls).
    """
    check_one_population(cfgs)
    run_dirs = [Path(d) for d in run_dirs]
    with runlock.holding(run_dirs):
        saved = [prepare(c, d) for c, d in zip(cfgs, run_dirs, strict=True)]
        summaries: list[dict | None] = [None] * len(cfgs)
        by_step: dict[int, list[int]] = {}
        for k, ckpt in enumerate(saved):
            if ckpt is not None and ckpt["finished"]:
                summaries[k] = ckpt["summary"]
                if _readable_summary(run_dirs[k]) != ckpt["summary"]:
                    atomic_write_json(run_dirs[k] / "summary.json", ckpt["summary"])
            else:
                if ckpt is None:  # a fresh start: nothing of an earlier run may be resumed
                    checkpoint.discard(run_dirs[k])
                by_step.setdefault(ckpt["step"] if ckpt else 0, []).append(k)
        for group in by_step.values():
            for members in balanced_chunks(group, cfgs[0].trainer.get("members_at_once")):
                with torch_threads(cfgs[0].trainer.threads):
                    results = _train([cfgs[k] for k in members],
                                     [run_dirs[k] for k in members],
                                     [saved[k] for k in members], on_step, len(group))
                for k, summary in zip(members, results, strict=True):
                    summaries[k] = summary
    return summaries


def balanced_chunks(members: list[int], limit: int | None) -> list[list[int]]:
    """`members` in order, cut into the fewest chunks of at most `limit`, of sizes that differ
    by one at most (9 by 4: 3, 3, 3). Never a chunk of one from a bigger group: a lone member
    trains through other kernels (other floats) than a population does, so 3 by 2 stays 3."""
    if not limit or len(members) <= limit:
        return [members]
    n = min(-(-len(members) // limit), len(members) // 2)
    size, extra = divmod(len(members), n)
    bounds = [k * size + min(k, extra) for k in range(n + 1)]
    return [members[a:b] for a, b in pairwise(bounds)]


def check_one_population(cfgs: Sequence[DictConfig]) -> None:
    """Raise ConfigError unless every config matches the first one outside MEMBER_KEYS (the
    population launcher groups jobs so; a direct caller could pass, say, two models)."""
    first = flatten(resolved_without(cfgs[0], MEMBER_KEYS))
    for k, cfg in enumerate(cfgs[1:], start=1):
        other = flatten(resolved_without(cfg, MEMBER_KEYS))
        if differing := sorted(key for key in first.keys() | other.keys()
                               if first.get(key) != other.get(key)):
            raise ConfigError(
                f"configs 0 and {k} cannot train as one population: they differ in "
                f"{', '.join(differing[:5])}{' ...' if len(differing) > 5 else ''}; members may "
                f"differ only in {', '.join(MEMBER_KEYS)} (train the others separately)")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads for one training (trainer.threads; None: leave them), restored
    afterwards, so a process that trains several configs (tests, notebooks, the bench) keeps
    its own setting."""
    before = torch.get_num_threads()
    if threads:  # one per process when several processes train at once
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _readable_summary(run_dir: Path) -> dict | None:
    try:
        return read_summary(run_dir)
    except ValueError:  # cut short or damaged: the checkpoint's copy replaces it
        return None


@dataclass
class Population:
    """What trains: the members' configs, the data, and every stateful part of the run."""

    cfgs: Sequence[DictConfig]
    device: torch.device
    ds: Dataset
    transform: InputTransform
    train_index: torch.Tensor
    evaluate: Evaluator
    model: nn.Module
    optimizer: PopulationSGD
    measures: StepMeasures
    sampler: EpochSampler
    augment: BatchAugment
    numerics: dict  # how the device computes (device.py), recorded in each summary
    forward: Forward  # the training forward: the model, or it under torch.compile

    def run_state(self) -> dict[str, MemberState]:
        """What a checkpoint of this population holds (run_state below)."""
        return run_state(self.model, self.optimizer, self.sampler, self.augment,
                         self.evaluate.resumable())

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch of every member: (augmented, transformed images, labels)."""
        index = rows(self.train_index, self.sampler.next())
        x = self.transform(self.augment(rows(self.ds.train_images, index)))
        return x, rows(self.ds.train_labels, index)


def run_state(model: nn.Module, optimizer: PopulationSGD, sampler: EpochSampler,
              augment: BatchAugment, extras: Mapping[str, MemberState] | None = None
              ) -> dict[str, MemberState]:
    """The parts of a population a checkpoint saves and restores, by name: the one place
    they are listed (state.py). `extras`: the evaluation's (Evaluator.resumable)."""
    return {"model": ModuleState(model),
            "streams": SubmoduleStates(model, len(sampler.generators)),  # dropout, norm noise
            "optimizer": optimizer, "sampler": sampler, "augment": augment, **(extras or {})}


def build_population(cfgs: Sequence[DictConfig], whole_population: int | None) -> Population:
    """Load the data and build the model, optimizer, measures, sampler and augmentation of
    `cfgs`, on the training device."""
    cfg, P, seeds = cfgs[0], len(cfgs), [c.seed for c in cfgs]
    device = resolve_device(cfg.trainer.device)
    numerics = configure(device, cfg.trainer.precision, cfg.trainer.deterministic)
    # Subnormal floats (below ~1e-38: a collapsed net's activations and gradients) make CPU
    # arithmetic up to 100x slower; flushing them to zero costs only those last bits.
    torch.set_flush_denormal(bool(cfg.trainer.flush_denormal))
    ds = load_dataset(cfg.dataset.name, to_absolute_path(cfg.dataset.root), cfg.dataset.mirror)
    transform = InputTransform(ds, cfg.dataset.binarize, cfg.dataset.standardize)
    ds = ds.to(device)
    train_index, val_index = validation_split(len(ds.train_labels), cfg.dataset.val_size)
    evaluate = Evaluator(cfg, ds, transform, train_index, val_index, seeds)
    model = autocast(build_model(cfgs, ds.image_shape).to(device), device,
                     cfg.trainer.precision)
    if whole_population:  # evaluation chunks as for the whole population: its floats
        model.widest_activation = model.widest_activation // P * whole_population
    move_step_streams(model, device)  # a step's random draws happen on the device (seeding)
    per_member = {key: torch.tensor([float(c.optim[key]) for c in cfgs], device=device)
                  for key in ("lr", "momentum", "weight_decay", "lr_decay", "lr_decay_steps")}
    optimizer = PopulationSGD(model.parameters(), **per_member)
    forward: Forward = model
    if cfg.trainer.get("compile", False):  # its trial step: the first examples, every member
        first = train_index[:cfg.trainer.batch_size].to(device).expand(P, -1)
        forward = compiled_forward(model, transform(rows(ds.train_images, first)))
    return Population(
        cfgs, device, ds, transform, train_index.to(device), evaluate, model, optimizer,
        StepMeasures(cfg.get("measures"), model, optimizer, member_losses),
        EpochSampler(len(train_index), cfg.trainer.batch_size, seeds, device),
        BatchAugment(seeds, [c.augment.crop_padding for c in cfgs],
                     [c.augment.flip for c in cfgs], device),
        numerics, forward)


def start_or_resume(population: Population, saved: Sequence[dict | None]
                    ) -> tuple[int, list[dict]]:
    """(the step to train after, the members' summaries): a fresh start, or the members'
    checkpoints restored into the population. Either way the summaries name this machine."""
    cfgs, P = population.cfgs, len(population.cfgs)
    if saved[0] is None:
        start_step, summaries = 0, [new_summary(c, P) for c in cfgs]
    else:
        start_step = checkpoint.restore(saved, population.run_state())
        summaries = [dict(s["summary"], population_size=P, resumed_from_step=start_step)
                     for s in saved]
    # this (re)start's: floats depend on it (machine.py) and on the numerics (device.py)
    recorded = machine.describe(population.device) | population.numerics
    for summary in summaries:
        summary["machine"] = recorded
    return start_step, summaries


class Divergence:
    """Which members still train. A member whose training loss passes the bound (NaN too)
    stops before its update; one whose weights stop being finite or whose validation loss
    passes it stops at the evaluation. Its summary says when and why.

    Reading `diverged` back on the host every step would stall a GPU, so every `check_every`
    steps (trainer.divergence_check_every; 1 on the CPU, where it costs nothing) a diverged
    member freezes on the device at once (its update masked out by `alive`, its step and loss
    kept in `frozen_at`/`frozen_loss`) and the host records it at the next check, and at every
    evaluation. The same members freeze at the same steps, with the same floats."""

    def __init__(self, cfg: DictConfig, summaries: list[dict], device: torch.device):
        P = len(summaries)
        self.summaries, self.bound = summaries, cfg.trainer.divergence_loss
        self.alive = torch.tensor([s["status"] == "running" for s in summaries], device=device)
        # How many members are alive, kept beside `alive` so that a step needs no tensor check
        # for it: while all are, the loss and the update skip the masking (the same floats).
        self.live = int(self.alive.sum())
        self.check_every = cfg.trainer.get("divergence_check_every") or (
            1 if device.type == "cpu" else DEVICE_CHECK_EVERY)
        self.frozen_at = torch.zeros(P, dtype=torch.long, device=device)
        self.frozen_loss = torch.zeros(P, device=device)

    @property
    def all_alive(self) -> bool:
        """Every member lives, and the host knows it: the step needs no mask."""
        return self.check_every == 1 and self.live == len(self.summaries)

    def members(self) -> list[int]:
        """The members still alive."""
        return self.alive.nonzero().flatten().tolist()

    def mark(self, members: list[int], steps: Sequence[int], why: Sequence[str]) -> None:
        for k, step, reason in zip(members, steps, why, strict=True):
            self.live -= self.summaries[k]["status"] == "running"
            self.summaries[k] |= {"status": "diverged", "diverged_at_step": step,
                                  "reason": reason}
            self.alive[k] = False

    def loss_reason(self, loss: float, step: int) -> str:
        return f"train loss {loss:.4g} at step {step} (bound {self.bound})"

    def record_frozen(self) -> None:
        """Mark the members that froze on the device since the last check as diverged."""
        still = self.alive.tolist()
        members = [k for k, s in enumerate(self.summaries)
                   if s["status"] == "running" and not still[k]]
        at, losses = self.frozen_at.tolist(), self.frozen_loss.tolist()
        self.mark(members, [at[k] for k in members],
                  [self.loss_reason(losses[k], at[k]) for k in members])

    def check_loss(self, step: int, loss: torch.Tensor, evaluated: bool) -> bool:
        """Freeze the members whose loss [P] at `step` diverged, before their update (on the
        host at once, or on the device until the next check: at every check_every-th step
        and an `evaluated` one). False: the host knows that every member has diverged."""
        within = loss.detach() <= self.bound  # False for NaN
        if self.check_every > 1:  # on the device now, on the host at the next check
            diverged = self.alive & ~within
            self.frozen_at.masked_fill_(diverged, step)
            self.frozen_loss.copy_(torch.where(diverged, loss.detach(), self.frozen_loss))
            self.alive &= ~diverged
            if step % self.check_every == 0 or evaluated:
                self.record_frozen()
                return self.live > 0
        # While every member lives one check suffices: the usual step makes no mask.
        elif self.live < len(self.summaries) or not within.all():
            members = (self.alive & ~within).nonzero().flatten().tolist()
            self.mark(members, [step] * len(members),
                      [self.loss_reason(loss[k].item(), step) for k in members])
            return self.live > 0
        return True

    def check_evaluation(self, step: int, rows: list[dict], model: nn.Module) -> None:
        """An update that exploded shows at the evaluation after it first, before any row of
        it is logged: weights that are no longer finite, or a validation loss past the bound."""
        P = len(self.summaries)
        finite = torch.stack([p.detach().reshape(P, -1).isfinite().all(1)  # [P] ones too
                              for p in model.parameters()]).all(0).tolist()
        exploded = [k for k in self.members()
                    if not finite[k] or not rows[k]["val/loss"] <= self.bound]
        self.mark(exploded, [step] * len(exploded), [
            f"after the update of step {step}: " + ("weights not finite" if not finite[k] else
                                                    f"validation loss {rows[k]['val/loss']:.4g}")
            + f" (bound {self.bound})" for k in exploded])


@dataclass
class Clock:
    """Wall time since the start, and the training loop's time outside evaluation and the
    measures (train_time_s: the steps alone)."""

    start: float = field(default_factory=time.time)
    loop_start: float = 0.0  # perf_counter() when the loop began; 0: it has not
    eval: float = 0.0
    measure: float = 0.0

    def start_loop(self) -> None:
        self.loop_start, self.eval, self.measure = time.perf_counter(), 0.0, 0.0  # not step 0's


class RunLog:
    """Each member's run store, logger sink and summary, and its training loss and accuracy
    summed over the steps since the last evaluation."""

    def __init__(self, cfgs: Sequence[DictConfig], run_dirs: Sequence[Path],
                 summaries: list[dict], resumed_at: int | None, device: torch.device):
        self.summaries = summaries
        self.stores = [RunStore(d, c, keep_until_step=resumed_at)
                       for d, c in zip(run_dirs, cfgs, strict=True)]
        self.sinks = [make_sink(c, d, run_name(c), c.logger.get("group") or c.name,
                                [f"{k}={v}" for k, v in axes(c).items()],
                                resume_step=resumed_at, axes=axes(c))
                      for c, d in zip(cfgs, run_dirs, strict=True)]
        for store, summary in zip(self.stores, summaries, strict=True):
            store.write_summary(summary)
        self.loss_sum = torch.zeros(len(cfgs), device=device)
        self.correct_sum = torch.zeros(len(cfgs), device=device)

    def add_step(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.detach()
        self.correct_sum += (logits.detach().argmax(-1) == y).float().mean(1)

    def write(self, k: int, row: dict) -> None:
        self.stores[k].log(row)
        self.sinks[k].log(row, step=row["step"])

    def log_measured(self, step: int, measured: dict[str, list[float]],
                     members: list[int]) -> None:
        """A row of its own for the measures of a step that is not evaluated."""
        for k in members:
            self.write(k, {"step": step, **{key: values[k] for key, values in measured.items()}})

    def log_evaluation(self, step: int, rows: list[dict], steps_averaged: int,
                       measured: dict[str, list[float]], members: list[int]) -> list[float]:
        """Log each member's row of the evaluation after `step` (with the training loss and
        accuracy averaged over `steps_averaged` steps, and the step's `measured` measures:
        one row per step), update its summary, empty the sums; returns the training losses."""
        train_loss = (self.loss_sum / max(steps_averaged, 1)).tolist()
        train_acc = (self.correct_sum / max(steps_averaged, 1)).tolist()
        for k in members:
            row, s = {"step": step, **rows[k]}, self.summaries[k]
            if steps_averaged:
                row |= {"train/loss": train_loss[k], "train/acc": train_acc[k]}
                s["final_train_loss"] = train_loss[k]
            row |= {key: values[k] for key, values in measured.items()}
            self.write(k, row)
            s |= {"steps_done": step, "final_val_acc": row["val/acc"],
                  "final_test_acc": row.get("test/acc")}
            if s["best_val_acc"] is None or row["val/acc"] > s["best_val_acc"]:
                # None where that evaluation skipped the test set (trainer.test_every)
                s |= {"best_val_acc": row["val/acc"], "best_val_step": step,
                      "test_acc_at_best_val": row.get("test/acc")}
        self.loss_sum.zero_()
        self.correct_sum.zero_()
        return train_loss

    def finish(self, status: str, reason: str | None, clock: Clock) -> None:
        """Each member's final summary (`status` for those still running), files closed."""
        for s in self.summaries:
            if s["status"] == "running":
                s["status"], s["reason"] = status, reason
            s["wall_time_s"] = round(time.time() - clock.start, 2)
            if clock.loop_start:  # training steps alone: no set-up, evaluation, measures
                s["train_time_s"] = round(time.perf_counter() - clock.loop_start
                                          - clock.eval - clock.measure, 3)
        for store, sink, summary in zip(self.stores, self.sinks, self.summaries, strict=True):
            store.write_summary(summary)
            store.close()
            sink.finish(summary)


def evaluate_and_log(population: Population, divergence: Divergence, log: RunLog,
                     clock: Clock, step: int, steps_averaged: int,
                     measured: dict[str, list[float]] | None = None) -> str:
    """Evaluate after the update of `step`, stop the members it shows diverged, and log each
    live member's row; returns the progress bar's text."""
    eval_start = time.perf_counter()
    model, cfg = population.model, population.cfgs[0]
    with_test = step % (cfg.trainer.test_every or cfg.trainer.eval_every) == 0 \
        or step == cfg.trainer.max_steps
    rows = population.evaluate(model, with_test=with_test, step=step)
    model.train()
    divergence.check_evaluation(step, rows, model)
    shown = divergence.members()
    train_loss = log.log_evaluation(step, rows, steps_averaged, measured or {}, shown)
    clock.eval += time.perf_counter() - eval_start
    if not shown:
        return "all diverged"
    best = max(shown, key=lambda k: rows[k]["val/acc"])
    return f"loss={train_loss[best]:.3f} val_acc={rows[best]['val/acc']:.4f}" + \
        (f" (best of {len(shown)})" if len(rows) > 1 else "")


def train_step(population: Population, divergence: Divergence, log: RunLog, clock: Clock,
               step: int, evaluated: bool) -> dict[str, list[float]] | None:
    """One step of every live member: batch, forward, divergence check, backward, the
    measures due at this step (read before the update: x_t and grad L(x_t)), update. Returns
    the measures ({} if none is due); None where every member has diverged (no update)."""
    p = population
    x, y = p.batch()
    replay = p.measures.capture(step)  # None unless a measure is due at this step
    logits = p.forward(x)
    loss = member_losses(logits, y)
    if not divergence.check_loss(step, loss, evaluated):
        return None
    all_alive = divergence.all_alive
    p.optimizer.zero_grad()
    (loss.sum() if all_alive else torch.where(divergence.alive, loss, 0.0).sum()).backward()
    p.optimizer.set_step(step)
    measured = {}
    if replay is not None:
        measure_start = time.perf_counter()
        measured = p.measures.measure(step, replay, x, y, loss, divergence.alive)
        clock.measure += time.perf_counter() - measure_start
    p.optimizer.step(None if all_alive else divergence.alive)
    log.add_step(loss, logits, y)
    return measured


def train_loop(population: Population, divergence: Divergence, log: RunLog, clock: Clock,
               run_dirs: Sequence[Path], start_step: int,
               on_step: Callable[[int], None] | None) -> None:
    """Steps start_step + 1 .. max_steps: evaluated every eval_every steps and at the end,
    checkpointed at the first evaluation past each multiple of checkpoint_every (evaluations
    are where the train-loss sums are empty, so nothing else needs saving)."""
    cfg, model = population.cfgs[0], population.model
    max_steps, eval_every = cfg.trainer.max_steps, cfg.trainer.eval_every
    checkpoint_every, last_checkpoint = cfg.trainer.checkpoint_every, start_step
    progress = tqdm(range(start_step + 1, max_steps + 1), desc=cfg.name, unit="step",
                    initial=start_step, total=max_steps, dynamic_ncols=True,
                    disable=None if cfg.trainer.progress else True)
    if start_step == 0:
        progress.set_postfix_str(evaluate_and_log(population, divergence, log, clock, 0, 0))
    model.train()
    clock.start_loop()
    set_norm_step = norm_step_setter(model)  # Batch Renorm's r_max/d_max schedule
    for step in progress:
        evaluated = step % eval_every == 0 or step == max_steps
        if not divergence.live:
            break
        set_norm_step(step)
        measured = train_step(population, divergence, log, clock, step, evaluated)
        if measured is None:
            break
        if on_step is not None:
            on_step(step)
        if (step + 1) % eval_every == 0 or step + 1 == max_steps:  # the step before one
            eval_start = time.perf_counter()
            population.evaluate.before_evaluation(model, step)  # probe.shift.successive
            clock.eval += time.perf_counter() - eval_start
        if evaluated:
            steps_averaged = step - (step - 1) // eval_every * eval_every
            progress.set_postfix_str(evaluate_and_log(population, divergence, log, clock, step,
                                                      steps_averaged, measured))
            if checkpoint_every and step < max_steps and \
                    step // checkpoint_every > last_checkpoint // checkpoint_every:
                checkpoint.save(run_dirs, population.cfgs, step, population.run_state(),
                                log.summaries)
                last_checkpoint = step
        elif measured:
            log.log_measured(step, measured, divergence.members())


def _train(cfgs: Sequence[DictConfig], run_dirs: Sequence[Path],
           saved: Sequence[dict | None], on_step: Callable[[int], None] | None = None,
           whole_population: int | None = None) -> list[dict]:
    """Train `cfgs` as one population. `whole_population`: the size of the population these
    members are a chunk of (trainer.members_at_once); evaluation sizes its forward passes for
    it, so the chunk logs the floats the whole population would."""
    clock = Clock()
    population = build_population(cfgs, whole_population)
    start_step, summaries = start_or_resume(population, saved)
    log = RunLog(cfgs, run_dirs, summaries, start_step if saved[0] else None, population.device)
    divergence = Divergence(cfgs[0], summaries, population.device)
    status, reason = "completed", None
    try:
        train_loop(population, divergence, log, clock, run_dirs, start_step, on_step)
    except BaseException as err:  # record why, keep what was logged, then let it propagate
        # SystemExit: submitit exits a preempted or timed-out job this way, to requeue it.
        stopped = isinstance(err, KeyboardInterrupt | SystemExit)
        status, reason = ("interrupted" if stopped else "failed", f"{type(err).__name__}: {err}")
        raise
    finally:
        log.finish(status, reason, clock)
        # After the summaries: the final checkpoint is what tells a rerun that nothing is left
        # to do, and it is written whatever checkpoint_every says (0 = no intermediate ones).
        if status == "completed":
            checkpoint.save(run_dirs, cfgs, cfgs[0].trainer.max_steps, population.run_state(),
                            summaries, finished=True)
    return summaries


JOB_ERRORS = (ConfigError, checkpoint.ResumeMismatchError, runlock.RunDirectoryBusy,
              DeviceError)


@hydra.main(config_path="../../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """One job. A bad job prints one `error:` line: a single run then exits with status 2; in
    a multirun (joblib, submitit) the error fails this job alone and Hydra reports it."""
    try:
        validate(cfg)  # before any data is loaded
        summary = train_population([cfg], [Path(HydraConfig.get().runtime.output_dir)])[0]
    except JOB_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(2)
    return summary["best_val_acc"]  # the objective a Hydra sweeper would read: validation


if __name__ == "__main__":
    main()
