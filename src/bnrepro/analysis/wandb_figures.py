"""Log an experiment's finished figures (and its claims tables) to wandb, in its runs' group.

A plot script adds the flag and, after writing its PNGs, makes one call:

    wandb_figures.add_flag(parser)
    ...
    wandb_figures.publish(args.wandb, config, [png, ...], claims=rows, wandb_dir=args.run_dir)

`config` is the config of one of the experiment's training runs (nested, flattened or a
DictConfig): it names the wandb group the training runs logged to (`logger.group`, else the
experiment `name`, as bnrepro.train does) and their project (`logger.project`). The call logs
one wandb run of job type "figures" in that group: each PNG as a `wandb.Image` under
`figures/<file stem>`, the claims as a `wandb.Table` under `claims`, and any other tables
under `tables/<name>`.

Offline unless WANDB_MODE says otherwise, like the training runs; the offline run goes to
`<wandb_dir>/wandb/offline-run-*` (pass the run store, not results/, which git tracks) and is
uploaded with `wandb sync`. Each call is a new wandb run (a new id): re-plotting adds a newer
"figures" run to the group rather than rewriting history in an existing one. Any wandb failure
is one warning: the figures on disk are what counts.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnrepro.config import flatten

FLAG_ENV = "BNREPRO_WANDB_FIGURES"  # "1": every plot script logs its figures, as --wandb does
DEFAULT_PROJECT = "bnrepro"  # conf/logger/wandb.yaml
CLAIM_COLUMNS = ("claim", "paper", "ours", "verdict", "dataset", "source")


def flag_from_env() -> bool:
    return os.environ.get(FLAG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def add_flag(parser: argparse.ArgumentParser) -> None:
    """`--wandb`: log the figures to wandb too (default: on when BNREPRO_WANDB_FIGURES=1)."""
    parser.add_argument("--wandb", action="store_true", default=flag_from_env(),
                        help="also log the figures and claims to the experiment's wandb group "
                             f"(offline unless WANDB_MODE says otherwise; or set {FLAG_ENV}=1)")


def target(config: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """The wandb project, entity and group of the training runs that had this config."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    flat = flatten(dict(config))
    return {"project": os.environ.get("WANDB_PROJECT") or flat.get("logger.project")
            or DEFAULT_PROJECT,
            "entity": os.environ.get("WANDB_ENTITY") or flat.get("logger.entity"),
            "group": flat.get("logger.group") or flat.get("name")}


def publish(enabled: bool, config: Mapping[str, Any] | DictConfig, images: Iterable[Path],
            *, wandb_dir: Path, claims: list[dict[str, Any]] | None = None,
            tables: Mapping[str, Any] | None = None) -> str | None:
    """If `enabled`, log the figures to the group of the runs with `config` (see `target`) and
    return the wandb run id; None when not enabled or when wandb failed (with one warning).
    `tables`: name -> pandas DataFrame."""
    if not enabled:
        return None
    return log_figures(images, wandb_dir=wandb_dir, claims=claims, tables=tables,
                       **target(config))


def log_figures(images: Iterable[Path], *, group: str | None, wandb_dir: Path,
                project: str = DEFAULT_PROJECT, entity: str | None = None,
                claims: list[dict[str, Any]] | None = None,
                tables: Mapping[str, Any] | None = None, mode: str | None = None
                ) -> str | None:
    """One wandb run (job type "figures", name "figures: <group>") holding `images` as
    wandb.Image under figures/<stem>, `claims` as a wandb.Table under `claims` (columns
    CLAIM_COLUMNS, missing cells empty) and `tables` under tables/<name>. Returns its id, or
    None with one warning if wandb fails."""
    images = [Path(p) for p in images]
    try:
        import wandb

        Path(wandb_dir).mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=project, entity=entity, group=group, job_type="figures",
                         name=f"figures: {group}", dir=str(wandb_dir),
                         mode=mode or os.environ.get("WANDB_MODE") or "offline",
                         config={"figures": [p.name for p in images], "group": group},
                         reinit="create_new", settings=wandb.Settings(silent=True,
                                                                      console="off"))
        try:
            row: dict[str, Any] = {f"figures/{p.stem}": wandb.Image(str(p), caption=p.name)
                                   for p in images}
            if claims:
                row["claims"] = wandb.Table(
                    columns=list(CLAIM_COLUMNS),
                    data=[[str(c.get(k, "")) for k in CLAIM_COLUMNS] for c in claims])
            for name, frame in (tables or {}).items():
                # pandas' NA/NaN -> None: a wandb.Table column must hold one type or None
                clean = frame.astype(object).where(frame.notna(), None)
                row[f"tables/{name}"] = wandb.Table(dataframe=clean)
            run.log(row)
        finally:
            run.finish()
        return run.id
    except Exception as err:  # wandb is a sink: the figures on disk are the result
        warnings.warn(f"figures not logged to wandb ({type(err).__name__}: {err}); the files "
                      "on disk are unaffected", stacklevel=2)
        return None
