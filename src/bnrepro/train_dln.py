"""Santurkar et al.'s deep linear network, trained as their App. A.1 says, top to bottom.

    python -m bnrepro.train_dln                  # standard and BN, 2 rates x 3 seeds, 10k steps
    python -m bnrepro.train_dln norms=[bn,lp1] steps=2000

A regression, not a classification: fit y = A x with W_k ... W_1 x by full-batch gradient
descent on the summed squared error (models/deep_linear.py), so it has its own short loop
rather than train.py's. Each norm's rates and seeds train as one population (P members, one batched
computation); every member writes a run directory like train.py's (config.yaml,
metrics.jsonl, summary.json), which bnrepro.run.runs reads. A finished run with the same config is
not trained again; anything else starts over (a run is seconds to a minute: no checkpoints).
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bnrepro.device import configure, resolve_device
from bnrepro.measures.hook import StepMeasures
from bnrepro.measures.probes import sigmoid_input_quantiles
from bnrepro.models.deep_linear import DeepLinearNet, squared_error
from bnrepro.optim import PopulationSGD
from bnrepro.run import machine
from bnrepro.run.store import RunStore, read_config, read_summary

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
HOW = ("device", "progress", "threads", "scale")  # scale: the tier (out_dir says where)


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


def train_population(cfg: DictConfig, norm: str) -> list[dict]:
    """Train every (rate, seed) of `norm` as one population; returns the members' summaries."""
    members = [(float(lr), int(seed)) for lr in cfg.lrs for seed in cfg.seeds]
    seeds = [seed for _, seed in members]
    configs = [member_config(cfg, norm, lr, s) for lr, s in members]
    dirs = [run_dir(cfg, norm, lr, s) for lr, s in members]
    if all(finished(d, c) for d, c in zip(dirs, configs, strict=True)):
        return [read_summary(d) for d in dirs]
    start = time.time()
    device = resolve_device(cfg.get("device", "cpu"))
    recorded = machine.describe(device) | configure(device)
    # The problem and the initialisation are drawn on the CPU: the same on every device.
    x, y = (t.to(device) for t in make_problem(cfg.data_seed, cfg.samples, cfg.dim))
    model = DeepLinearNet(seeds, cfg.dim, cfg.depth, norm, cfg.model).to(device)
    model.train()
    P = len(seeds)
    lr = torch.tensor([lr for lr, _ in members], device=device)
    zero = torch.zeros(P, device=device)
    optimizer = PopulationSGD(model.parameters(), lr, momentum=zero, weight_decay=zero)
    measures = StepMeasures(cfg.measures, model, optimizer, squared_error)
    stores = [RunStore(d, c) for d, c in zip(dirs, configs, strict=True)]
    summaries = [{"status": "running", "reason": None, "steps_done": 0, "max_steps": cfg.steps,
                  "final_train_loss": None, "min_train_loss": None, "diverged_at_step": None,
                  "wall_time_s": None, "population_size": P, "machine": recorded,
                  "axes": {"dataset": DATASET, "norm": norm, "lr": lr, "seed": s}}
                 for lr, s in members]
    alive = torch.ones(P, dtype=torch.bool, device=device)

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

    try:
        # t counts the updates done: the row of step t holds the loss at those weights, as
        # train.py's rows do. The measures of update t + 1 (measures/: "step t+1, at the
        # weights before its update") are taken on the same forward pass and logged as t + 1.
        for t in tqdm(range(cfg.steps + 1), desc=f"dln {norm}", unit="step",
                      disable=None if cfg.progress else True):
            logging = t % cfg.log_every == 0 or t == cfg.steps
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
            if not alive.any() or t == cfg.steps:
                break
            optimizer.zero_grad()
            torch.where(alive, loss, 0.0).sum().backward()
            if replay is not None:
                values = measures.measure(t + 1, replay, x, y, loss, alive)
                for k in alive.nonzero().flatten().tolist():
                    stores[k].log({"step": t + 1, **{key: v[k] for key, v in values.items()}})
            optimizer.step(alive)
    finally:
        for k in range(P):
            s = summaries[k]
            if s["status"] == "running":
                s["status"] = "completed" if s["steps_done"] == cfg.steps else "interrupted"
            s["wall_time_s"] = round(time.time() - start, 2)
            stores[k].write_summary(s)
            stores[k].close()
    return summaries


@hydra.main(config_path="../../conf", config_name="dln", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    for norm in cfg.norms:
        train_population(cfg, norm)


if __name__ == "__main__":
    main()
