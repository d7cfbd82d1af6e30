"""Santurkar et al.'s deep linear network, trained as their App. A.1 says, top to bottom.

    python -m bnrepro.train_dln                  # standard and BN, 2 rates x 3 seeds, 10k steps
    python -m bnrepro.train_dln norms=[bn,lp1] steps=2000

A regression, not a classification: fit y = A x with W_k ... W_1 x by full-batch gradient
descent on the summed squared error (models/deep_linear.py), so it has its own short loop
rather than train.py's. Each norm's rates and seeds train as one population (P members, one batched
computation); every member writes a run directory like train.py's (config.yaml,
metrics.jsonl, summary.json, checkpoint-<step>.pt), which bnrepro.run.runs reads.

Resuming, as train.py's runs do (bnrepro.run.checkpoint): every `checkpoint_every` steps, and
at the end, each member's run directory gets its own slice of the population's state (weights,
the norms' buffers and streams, optimizer buffers, its summary so far, which says whether it
diverged), committed for the whole population at once. One file per run directory, as train.py
keeps: a run directory stays the whole record of its run, and a member resumes in any
regrouping of its population (e.g. beside a seed added later). A rerun of the same command
trains no finished member again and resumes the others from their last checkpoint: their
metrics.jsonl rows past it are dropped and logged again, and the run ends as one never
interrupted (the same floats on the CPU). A checkpoint of another config (any key but HOW's)
is refused with one `error:` line, never resumed into a run of mixed configs. Runs of versions
without checkpoints count as finished by their summary.json; a changed config retrains them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from bnrepro.atomic import atomic_write_json
from bnrepro.device import configure, resolve_device
from bnrepro.measures.hook import StepMeasures
from bnrepro.measures.probes import sigmoid_input_quantiles
from bnrepro.models.deep_linear import DeepLinearNet, squared_error
from bnrepro.optim import PopulationSGD
from bnrepro.run import checkpoint, machine, runlock
from bnrepro.run.plan import add_to_plan, plan_file
from bnrepro.run.store import RunStore, read_config, read_summary
from bnrepro.state import MemberState, ModuleState, SubmoduleStates
from bnrepro.validation import tier_problem

DATASET = "gaussian-linear"  # how results name this synthetic problem


def make_problem(seed: int, samples: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x ~ N(0, I) [samples, dim] and targets A x for A with i.i.d. N(0, 1) entries
    (App. A.1: "inputs x from a Gaussian distribution and a matrix A with i.i.d. Gaussian
    entries"). One problem for all members: seeds vary the initialisation only."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, dim, generator=g)
    a = torch.randn(dim, dim, generator=g)
    return x, x @ a.T


# Where and how a run trains, not what it is (summary.json's machine says where): not recorded
# in its config, so that a finished run stays finished when they change, as train.py's resume
# allows.
# scale: the tier's label (out_dir says where its runs go).
HOW = ("device", "progress", "threads", "checkpoint_every", "scale")


def member_config(cfg: DictConfig, norm: str, lr: float, seed: int) -> DictConfig:
    """The resolved config one run directory records: the experiment's, with its norm, rate
    and seed, without HOW."""
    member = OmegaConf.to_container(cfg, resolve=True)
    for key in ("norms", "lrs", "seeds", *HOW):
        member.pop(key, None)
    member |= {"norm": norm, "lr": lr, "seed": seed}
    return OmegaConf.create(member)


def run_dir(cfg: DictConfig, norm: str, lr: float, seed: int) -> Path:
    return Path(to_absolute_path(cfg.out_dir)) / f"norm={norm},lr={lr:g},seed={seed}"


def finished(directory: Path, config: DictConfig) -> bool:
    """A completed run of `config` (HOW set aside: runs that recorded it count too)."""
    summary = read_summary(directory) if (directory / "config.yaml").is_file() else None
    if summary is None or summary.get("status") != "completed":
        return False
    recorded = read_config(directory)
    for key in HOW:
        recorded.pop(key, None)
    return recorded == config


def fingerprint(config: DictConfig) -> dict:
    """What a checkpoint must match to be resumed: the whole member config (HOW is already
    out of it; the loss rows, measures and probes logged so far depend on all the rest)."""
    return OmegaConf.to_container(config, resolve=True)


# What a refused checkpoint's error line tells the user to do (checkpoint.load).
REMEDY = ("delete this norm's run directories under out_dir (or their checkpoint-*.pt files) "
          "to train them over, or set another out_dir")


@dataclass(frozen=True)
class Member:
    """One (rate, seed) of a norm's population: its config and its run directory."""

    lr: float
    seed: int
    config: DictConfig
    dir: Path


def run_state(model: nn.Module, optimizer: PopulationSGD, size: int) -> dict[str, MemberState]:
    """What a checkpoint saves and restores (bnrepro.state), by name: the weights and the
    norms' buffers, the noisy norms' random streams, the optimizer's buffers (none while the
    momentum is 0, as here: the weights alone then carry the optimizer). StepMeasures holds
    nothing between steps (the landscape walks along the gradient, no random direction; the
    replay draws from the model's streams), so it has no part here."""
    return {"model": ModuleState(model), "streams": SubmoduleStates(model, size),
            "optimizer": optimizer}


class Snapshot:
    """A part's member states as they were when taken (MemberState, for saving only)."""

    def __init__(self, part: MemberState):
        self.states = part.member_states()

    def member_states(self) -> list[dict]:
        return self.states

    def load_member_states(self, states: Sequence[dict | None]) -> None:
        raise TypeError("a snapshot is only saved, never restored into")


def new_summary(cfg: DictConfig, norm: str, member: Member) -> dict:
    return {"status": "running", "reason": None, "steps_done": 0, "max_steps": cfg.steps,
            "final_train_loss": None, "min_train_loss": None, "diverged_at_step": None,
            "resumed_from_step": None, "wall_time_s": None,
            "axes": {"dataset": DATASET, "norm": norm, "lr": member.lr, "seed": member.seed}}


def train_population(cfg: DictConfig, norm: str,
                     on_step: Callable[[int], None] | None = None) -> list[dict]:
    """Train every (rate, seed) of `norm` as one population; returns the members' summaries.

    A finished member is not trained again; the others resume from their checkpoints. Members
    of different resume steps (a seed added to a population half trained) train as separate
    populations. Raises checkpoint.ResumeMismatchError where a run directory holds a checkpoint
    of another config, runlock.RunDirectoryBusy where another process trains in one.
    `on_step(t)`, when given, is called after the update of step t (the tests interrupt there).
    """
    members = [Member(lr, seed, member_config(cfg, norm, lr, seed), run_dir(cfg, norm, lr, seed))
               for lr in map(float, cfg.lrs) for seed in map(int, cfg.seeds)]
    if all(finished(m.dir, m.config) for m in members):
        return [read_summary(m.dir) for m in members]
    summaries: list[dict | None] = [None] * len(members)
    with runlock.holding([m.dir for m in members]):
        saved: list[dict | None] = [None] * len(members)
        by_step: dict[int, list[int]] = {}
        for k, m in enumerate(members):
            if finished(m.dir, m.config):  # also a run of a version without checkpoints
                summaries[k] = read_summary(m.dir)
                continue
            saved[k] = checkpoint.load(m.dir, m.config, fingerprint, REMEDY)
            if saved[k] is not None and saved[k]["finished"]:  # diverged members end so too
                summaries[k] = saved[k]["summary"]
                if read_summary(m.dir) != summaries[k]:  # a kill between the two writes
                    atomic_write_json(m.dir / "summary.json", summaries[k])
                continue
            if saved[k] is None:  # a fresh start: no older checkpoint may be resumed later
                checkpoint.discard(m.dir)
            by_step.setdefault(saved[k]["step"] if saved[k] else 0, []).append(k)
        for group in by_step.values():
            results = _train(cfg, norm, [members[k] for k in group], [saved[k] for k in group],
                             on_step)
            for k, summary in zip(group, results, strict=True):
                summaries[k] = summary
    return summaries


def _train(cfg: DictConfig, norm: str, members: Sequence[Member], saved: Sequence[dict | None],
           on_step: Callable[[int], None] | None) -> list[dict]:
    """Train `members` as one population, from step 0 or from their checkpoints `saved` (all
    of one step)."""
    start = time.time()
    device = resolve_device(cfg.get("device", "cpu"))
    recorded = machine.describe(device) | configure(device)
    # The problem and the initialisation are drawn on the CPU: the same on every device.
    x, y = (t.to(device) for t in make_problem(cfg.data_seed, cfg.samples, cfg.dim))
    P = len(members)
    model = DeepLinearNet([m.seed for m in members], cfg.dim, cfg.depth, norm, cfg.model)
    model = model.to(device)
    model.train()
    lr = torch.tensor([m.lr for m in members], device=device)
    zero = torch.zeros(P, device=device)
    optimizer = PopulationSGD(model.parameters(), lr, momentum=zero, weight_decay=zero)
    measures = StepMeasures(cfg.measures, model, optimizer, squared_error)
    parts = run_state(model, optimizer, P)
    if saved[0] is None:
        first, summaries = 0, [new_summary(cfg, norm, m) for m in members]
    else:
        first = checkpoint.restore(saved, parts)
        summaries = [dict(s["summary"], resumed_from_step=first) for s in saved]
    for s in summaries:  # this (re)start's
        s |= {"population_size": P, "machine": recorded}
    configs, dirs = [m.config for m in members], [m.dir for m in members]
    stores = [RunStore(d, c, keep_until_step=first if saved[0] else None)
              for d, c in zip(dirs, configs, strict=True)]
    # A checkpoint's summaries say who diverged: only the others train on.
    alive = torch.tensor([s["status"] == "running" for s in summaries], device=device)

    def log(step: int, loss: torch.Tensor, preactivations: list[torch.Tensor]) -> None:
        probes = sigmoid_input_quantiles(preactivations, 0, cfg.probe_quantiles) \
            if preactivations else [{}] * P
        for k in alive.nonzero().flatten().tolist():
            row = {"step": step, "train/loss": loss[k].item(), **probes[k]}
            stores[k].log(row)
            s = summaries[k]
            s |= {"steps_done": step, "final_train_loss": row["train/loss"]}
            if s["min_train_loss"] is None or row["train/loss"] < s["min_train_loss"]:
                s["min_train_loss"] = row["train/loss"]

    ended = False
    try:
        # t counts the updates done: the row of step t holds the loss at those weights, as
        # train.py's rows do. The measures of update t + 1 (measures/: "step t+1, at the
        # weights before its update") are taken on the same forward pass and logged as t + 1.
        # The checkpoint of step t holds the state step t's forward pass starts from (taken
        # before it: the pass moves the norms' buffers and streams) and the log through that
        # pass's row (saved after it); a resume redoes the pass without logging it again.
        for t in tqdm(range(first, cfg.steps + 1), desc=f"dln {norm}", unit="step",
                      initial=first, total=cfg.steps + 1,
                      disable=None if cfg.progress else True):
            logging = (t % cfg.log_every == 0 or t == cfg.steps) and (t > first or not saved[0])
            snapshot = {name: Snapshot(part) for name, part in parts.items()} \
                if cfg.checkpoint_every and t % cfg.checkpoint_every == 0 \
                and first < t < cfg.steps else None
            measuring = t < cfg.steps and bool(measures.due(t + 1))
            replay = measures.capture(t + 1) if measuring else None
            preactivations: list[torch.Tensor] | None = [] if logging else None
            loss = squared_error(model(x, preactivations), y)
            diverged = alive & ~loss.detach().isfinite()
            for k in diverged.nonzero().flatten().tolist():
                summaries[k] |= {"status": "diverged", "diverged_at_step": t,
                                 "reason": f"train loss {loss[k].item():.4g} at step {t}"}
            alive &= ~diverged
            if logging:
                log(t, loss.detach(), [h.detach() for h in preactivations])
            if snapshot is not None:
                checkpoint.save(dirs, configs, t, snapshot, summaries, fingerprint_of=fingerprint)
            if not alive.any() or t == cfg.steps:
                break
            optimizer.zero_grad()
            torch.where(alive, loss, 0.0).sum().backward()
            if replay is not None:
                values = measures.measure(t + 1, replay, x, y, loss, alive)
                for k in alive.nonzero().flatten().tolist():
                    stores[k].log({"step": t + 1, **{key: v[k] for key, v in values.items()}})
            optimizer.step(alive)
            if on_step is not None:
                on_step(t + 1)
        ended = True
    finally:
        for k, s in enumerate(summaries):
            if s["status"] == "running":
                s["status"] = "completed" if s["steps_done"] == cfg.steps else "interrupted"
            s["wall_time_s"] = round(time.time() - start, 2)
            stores[k].write_summary(s)
            stores[k].close()
        # After the summaries, as train.py does: the final checkpoint tells a rerun that
        # nothing is left to do, diverged members included. An interrupted run saves nothing
        # more: mid-step its state matches no logged step, so it resumes from the last one.
        if ended:
            checkpoint.save(dirs, configs, cfg.steps, parts, summaries, finished=True,
                            fingerprint_of=fingerprint)
    return summaries


@hydra.main(config_path="../../conf", config_name="dln", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Every norm's population in turn. A run directory that holds another config's checkpoint
    or is in use stops it with one `error:` line (exit status 2)."""
    if tier := tier_problem(cfg):
        print(f"error: {tier}", file=sys.stderr)
        sys.exit(2)
    plan = plan_file()
    if plan is not None:  # BNREPRO_PLAN: say which runs would train, train none
        dirs = [run_dir(cfg, norm, lr, seed)
                for norm in cfg.norms for lr in cfg.lrs for seed in cfg.seeds]
        # a full-batch step: depth linear maps of dim x dim, forward (2 FLOPs per multiply-
        # add) and backward (twice that), for every sample
        step_flops = 6.0 * cfg.samples * cfg.dim ** 2 * cfg.depth
        add_to_plan(plan, dirs, [cfg.steps] * len(dirs), [step_flops] * len(dirs))
        return
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        for norm in cfg.norms:
            train_population(cfg, norm)
    except (checkpoint.ResumeMismatchError, runlock.RunDirectoryBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
