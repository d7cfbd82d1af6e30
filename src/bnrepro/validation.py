"""Config checks that run before any data is loaded: one line per problem, naming the key.

Unknown group options (dataset=foo, hydra/launcher=foo) are refused by Hydra itself, with the
list of available options; this catches bad values inside the groups.
"""

from __future__ import annotations

from omegaconf import DictConfig

from bnrepro.data.datasets import SPECS
from bnrepro.device import DEVICE_PATTERN, PRECISIONS
from bnrepro.measures import measure_problems
from bnrepro.measures.evaluation import PROBE_NETWORKS
from bnrepro.models import ACTIVATIONS, CONV_EXECUTIONS, MEMORY_FORMATS, MODELS
from bnrepro.norms import NORMS
from bnrepro.norms.batch import INFERENCE
from bnrepro.norms.lp import NORM_OF
from bnrepro.norms.noisy import SIGMA_PARAMS, WHERE

LOGGERS = ("none", "wandb")


class ConfigError(ValueError):
    """A config value is out of range; the message names the key, the value and what is allowed."""


def config_problems(cfg: DictConfig) -> list[str]:
    problems = []

    def check(key: str, ok: bool, allowed: str) -> None:
        if not ok:
            problems.append(f"{key}={_value(cfg, key)!r} is not allowed: {allowed}")

    def one_of(key: str, allowed: tuple) -> None:
        check(key, _value(cfg, key) in allowed, f"choose one of {list(allowed)}")

    if tier := tier_problem(cfg):
        problems.append(tier)
    one_of("dataset.name", tuple(SPECS))
    one_of("model.kind", tuple(MODELS))
    one_of("model.norm", tuple(NORMS))
    one_of("model.activation", tuple(ACTIVATIONS))
    one_of("model.bn_inference", INFERENCE)
    if "conv_execution" in cfg.model:  # conv nets only
        one_of("model.conv_execution", CONV_EXECUTIONS)
    if "memory_format" in cfg.model:  # conv nets only
        one_of("model.memory_format", MEMORY_FORMATS)
    one_of("logger.kind", LOGGERS)
    check("trainer.device", DEVICE_PATTERN.fullmatch(str(cfg.trainer.device)) is not None,
          "choose auto, cpu, cuda or cuda:N")
    one_of("trainer.precision", PRECISIONS)
    check("trainer.deterministic", isinstance(cfg.trainer.get("deterministic"), bool),
          "must be true or false")
    check("trainer.compile", isinstance(cfg.trainer.get("compile", False), bool),
          "must be true or false")
    for knob in ("threads", "divergence_check_every", "members_at_once"):  # null: default
        value = cfg.trainer.get(knob)
        check(f"trainer.{knob}", value is None or (_integer(value) and value >= 1),
              "must be null or >= 1")
    t, o = cfg.trainer, cfg.optim
    check("optim.lr", _number(o.lr) and o.lr > 0, "must be > 0")
    check("optim.momentum", _number(o.momentum) and 0 <= o.momentum < 1, "must be in [0, 1)")
    check("optim.weight_decay", _number(o.weight_decay) and o.weight_decay >= 0, "must be >= 0")
    check("optim.lr_decay", _number(o.lr_decay) and 0 < o.lr_decay <= 1,
          "must be in (0, 1] (1 = constant rate)")
    check("optim.lr_decay_steps", _number(o.lr_decay_steps) and o.lr_decay_steps > 0,
          "must be > 0")
    a = cfg.augment
    check("augment.crop_padding", _integer(a.crop_padding) and a.crop_padding >= 0,
          "must be an integer >= 0 (0 = no random crops)")
    check("augment.flip", isinstance(a.flip, bool), "must be true or false")
    check("model.dropout", _number(cfg.model.dropout) and 0 <= cfg.model.dropout < 1,
          "must be in [0, 1)")
    check("model.init_std", cfg.model.init_std is None or
          (_number(cfg.model.init_std) and cfg.model.init_std > 0), "must be > 0 (or null)")
    spec = NORMS.get(cfg.model.norm)
    # A norm with batch statistics needs two examples for a spread (BN: a variance).
    min_batch = 2 if spec is not None and spec.batch_statistics else 1
    check("trainer.batch_size", _integer(t.batch_size) and t.batch_size >= min_batch,
          f"must be an integer >= {min_batch}")
    ghost = cfg.model.get("bn_ghost_batch", 0)
    reads_ghost = spec is not None and "bn_ghost_batch" in spec.knobs
    check("model.bn_ghost_batch", ghost == 0 or (
        reads_ghost and _integer(ghost) and ghost >= 2 and _integer(t.batch_size)
        and t.batch_size % ghost == 0),
          "must be 0 (the whole mini-batch), or for bn, brn and lp* an integer >= 2 dividing "
          "trainer.batch_size")
    check("trainer.max_steps", _integer(t.max_steps) and t.max_steps >= 1,
          "must be an integer >= 1")
    check("trainer.flush_denormal", isinstance(t.get("flush_denormal"), bool),
          "must be true or false")
    check("trainer.test_every", t.get("test_every") is None or (
        _integer(t.test_every) and t.test_every >= 1 and _integer(t.eval_every)
        and t.test_every % t.eval_every == 0), "must be null or a multiple of trainer.eval_every")
    check("trainer.eval_every", _integer(t.eval_every) and 1 <= t.eval_every <= t.max_steps,
          f"must be an integer in [1, trainer.max_steps={t.max_steps}]")
    check("trainer.checkpoint_every", _integer(t.checkpoint_every) and t.checkpoint_every >= 0,
          "must be an integer >= 0 (0 = off)")
    check("trainer.population_batches", _integer(t.population_batches)
          and t.population_batches >= 1, "must be an integer >= 1")
    check("probe.quantiles", all(_number(q) and 0 < q < 1 for q in cfg.probe.quantiles),
          "every quantile must be in (0, 1)")
    check("probe.num_examples", _integer(cfg.probe.num_examples)
          and cfg.probe.num_examples >= 2, "must be an integer >= 2")
    check("probe.networks", all(n in PROBE_NETWORKS for n in cfg.probe.networks),
          f"each one of {list(PROBE_NETWORKS)}")
    check("probe.inference_gap", isinstance(cfg.probe.get("inference_gap", False), bool),
          "must be true or false")
    check("trainer.eval_memory_mb", _number(t.eval_memory_mb) and t.eval_memory_mb > 0,
          "must be > 0")
    check("probe.train_noise", isinstance(cfg.probe.get("train_noise"), bool),
          "must be true or false")
    shift = cfg.probe.get("shift")
    if shift is not None:
        check("probe.shift.enabled", isinstance(shift.get("enabled"), bool),
              "must be true or false")
        check("probe.shift.levels", _integer(shift.get("levels")) and shift.levels >= 1,
              "must be an integer >= 1")
        check("probe.shift.max_values_per_unit", _integer(shift.get("max_values_per_unit"))
              and shift.max_values_per_unit >= 1, "must be an integer >= 1")
        check("probe.shift.successive", isinstance(shift.get("successive", False), bool),
              "must be true or false")
    check("probe.residual_variance", isinstance(cfg.probe.get("residual_variance", True), bool),
          "must be true or false")
    model_spec = MODELS.get(cfg.model.kind)
    if model_spec is not None:
        for key, ok, allowed in model_spec.checks(cfg.model):
            check(f"model.{key}", ok, allowed)
    if spec is not None:
        problems += _norm_problems(cfg.model, spec.knobs)
    problems += measure_problems(cfg.get("measures"), t.max_steps,
                                 model_spec.num_layers(cfg.model) if model_spec else None)
    n_train, n_test = SPECS.get(cfg.dataset.name, (None, 0, 0))[1:]
    check("trainer.test_examples", t.get("test_examples") is None or (
        _integer(t.test_examples) and 1 <= t.test_examples <= n_test),
          f"must be null (the whole test set) or an integer in [1, {n_test}]")
    check("dataset.val_size", _integer(cfg.dataset.val_size) and _integer(t.batch_size) and
          1 <= cfg.dataset.val_size <= n_train - t.batch_size,
          f"must be an integer in [1, {n_train} - trainer.batch_size]")
    return problems


def _norm_problems(model: DictConfig, knobs: tuple[str, ...]) -> list[str]:
    """The chosen norm's own knobs, and whether it fits the model's layers."""
    problems = []

    def check(key: str, ok: bool, allowed: str) -> None:
        if not ok:
            problems.append(f"model.{key}={_value(model, key)!r} is not allowed: {allowed}")

    spec = MODELS.get(model.kind)
    if spec is None:
        return problems  # model.kind itself is reported
    if NORMS[model.norm].conv_only and not spec.conv:
        check("norm", False, f"it normalises over positions: conv nets only (model.kind="
                              f"{model.kind!r})")
    if "norm_groups" in knobs:
        widths = spec.normalised_widths(model)
        groups = model.get("norm_groups")
        check("norm_groups", _integer(groups) and groups >= 1 and
              all(w % groups == 0 for w in widths),
              f"must be an integer >= 1 dividing every normalised width {sorted(set(widths))}")
    if "brn" in knobs:
        b = model.brn
        check("brn.r_max", _number(b.r_max) and b.r_max >= 1, "must be >= 1")
        check("brn.d_max", _number(b.d_max) and b.d_max >= 0, "must be >= 0")
        for key in ("warmup_steps", "relax_steps"):
            check(f"brn.{key}", _integer(b[key]) and b[key] >= 0, "must be an integer >= 0")
    if "noise" in knobs:
        n = model.noise
        for key in ("n_mu", "r_mu", "r_sigma"):
            check(f"noise.{key}", _number(n[key]) and n[key] >= 0, "must be >= 0")
        check("noise.n_sigma", _number(n.n_sigma) and n.n_sigma >= 1, "must be >= 1")
        check("noise.sigma_param", n.sigma_param in SIGMA_PARAMS,
              f"choose one of {list(SIGMA_PARAMS)}")
        check("noise.where", n.where in WHERE, f"choose one of {list(WHERE)}")
    if "lp" in knobs:
        check("lp.norm_of", model.lp.norm_of in NORM_OF, f"choose one of {list(NORM_OF)}")
    return problems


def tier_problem(cfg: DictConfig) -> str | None:
    """Why `cfg` may not train at its tier, or None. Above the cpu tier an experiment needs its
    profile there (it sets scale.profiled): without one, its CPU-sized runs would land in the
    tier's run folder and be read as that tier's results."""
    scale = cfg.get("scale")
    if scale is None or scale.get("profiled", True):
        return None
    return (f"scale={scale.name}: {cfg.name} has no {scale.name} profile "
            f"(conf/profile/{scale.name}/{cfg.name}.yaml), so its cpu tier's runs would train "
            f"into {scale.runs}; run it at scale=cpu, or write that profile")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every bad value of `cfg`."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _value(cfg: DictConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node.get(part) if hasattr(node, "get") else None
    return node


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
