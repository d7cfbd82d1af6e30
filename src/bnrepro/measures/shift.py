"""Distributional shift: how far the distribution of each hidden layer's inputs to the
nonlinearity has moved, as a Wasserstein-1 distance, at every evaluation.

Ioffe & Szegedy (2015, Sec. 2) define internal covariate shift as "the change in the
distribution of network activations due to the change in network parameters during
training". Santurkar et al. (2018) look at it through "the distribution (over a batch) of a
random input" (Sec. 2, Fig. 1c): App. A.2.1 samples "random activations from any given layer
[...] and plot[s] its distribution over the batch dimension for fully connected layers, and over
the batch, height, width dimension for convolutional layers". A distribution is therefore a
unit's (a feature's, or a map channel's), not the layer's values pooled over units: pooling
would average away exactly what noisy BN does (a different random shift per unit and step).

What is computed, per member, per probed network and hidden layer i, on the evaluator's fixed
probe set (the same examples at every evaluation, evaluation.py):

  x_j          the M values of unit j on the probe set (examples x positions; for conv maps at
               most `max_values_per_unit`: the same evenly strided positions of every example)
  Q_j(u)       = x_j,(ceil(u M)), the empirical quantile function (x_j sorted, 1-based)
  sketch       Q_j(u_k) at the K midpoint levels u_k = (k - 1/2) / K, k = 1..K (K = `levels`)
  W1_j(a, b)   = (1/K) sum_k |Q^a_j(u_k) - Q^b_j(u_k)|
  w1_init      = mean over units j of W1_j(now, step 0)
  w1_prev      = mean over units j of W1_j(now, previous evaluation)   (absent at step 0):
               the drift over one evaluation interval (trainer.eval_every steps)
  w1_step      = mean over units j of W1_j(after step t, after step t - 1), t an evaluated
               step (probe.shift.successive; training network only): the shift between two
               successive training steps, Santurkar et al.'s Fig. 8 measure. The sketch after
               step t - 1 is taken on the same probe inputs right after that step's update
               (Evaluator.before_evaluation), with that step's probe noise for a noisy norm;
               absent at step 0. Its interval is one step whatever eval_every is, so noise
               injected afresh at every step and a net's drift per step compare as the paper's
               figure does; w1_prev grows with the interval for a drifting net, not for noise.
  w1_init_rel, w1_prev_rel, w1_step_rel
               = sum_j W1_j / sum_j std_j of the reference (step 0, previous evaluation,
                 step t - 1), std the unit's population standard deviation over its M
                 values: the shift in units of the layer's typical spread, so nets of
                 different activation scales compare; a dead unit (std 0) adds to neither
                 sum instead of dividing by zero.

Exactness. The W1 distance between two empirical distributions of M values each is
integral_0^1 |Q^a(u) - Q^b(u)| du = (1/M) sum_m |a_(m) - b_(m)| (sorted samples). With K = M the
sketch picks exactly a_(k) at level k, so W1_j above is exact. With K < M it is the midpoint rule
for that integral of step functions: per level cell the error is at most 1/K times the rise of
Q^a plus that of Q^b across the cell, so in total |error| <= (range(a) + range(b)) / K (range =
max - min). That bound is loose (the tails); tests/test_shift.py checks the error on Gaussian
probe-sized samples (M = 960, std 1) at the default K = 100 below 0.01, i.e. a hundredth of a
standard deviation: small against the shifts we compare, though a large fraction of a W1 that
is itself below ~0.1 std.

Step-0 and previous-evaluation sketches are per-member state: checkpoints carry them
(`member_state` / `load_member_states`), so a resumed run logs the numbers an uninterrupted
one does. A run resumed from a checkpoint written before this existed has no step-0 sketch:
it logs no w1_init (and no w1_prev at its first evaluation after the resume).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def quantile_sketch(values: torch.Tensor, levels: int) -> torch.Tensor:
    """[..., M] values -> [..., K] empirical quantiles at u_k = (k - 1/2) / K: the
    ceil(u_k M)-th smallest value (1-based), in exact integer arithmetic."""
    M = values.shape[-1]
    k = torch.arange(1, levels + 1, device=values.device)
    index = ((2 * k - 1) * M + 2 * levels - 1) // (2 * levels) - 1  # ceil((2k-1) M / 2K) - 1
    return values.sort(dim=-1).values.index_select(-1, index)


def sketch_w1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """W1 per unit from two sketches [..., K] at the same levels: mean |a - b| over levels."""
    return (a - b).abs().mean(-1)


@dataclass
class LayerSketch:
    """One hidden layer on one probe set: per member and unit, the quantile sketch and the
    standard deviation of its values."""
    quantiles: torch.Tensor  # [P, U, K]
    std: torch.Tensor  # [P, U]


class UnitValues:
    """Collects, chunk by chunk of one probe set, every hidden layer's values per member and
    unit ([P, U, M]); for conv maps only the positions a stride keeps (the same in every
    example, so the kept values do not depend on the chunking)."""

    def __init__(self, num_examples: int, max_values_per_unit: int):
        self.num_examples, self.max_values = num_examples, max_values_per_unit
        self.values: list[list[torch.Tensor]] = []

    def add(self, preactivations: Sequence[torch.Tensor]) -> None:
        """One chunk: per hidden layer, [P, n, U, ...] inputs to the nonlinearity."""
        if not self.values:
            self.values = [[] for _ in preactivations]
        for i, h in enumerate(preactivations):
            P, n, U = h.shape[:3]
            positions = h.detach().float().reshape(P, n, U, -1)
            stride = max(1, math.ceil(positions.shape[3] * self.num_examples / self.max_values))
            kept = positions[..., ::stride].transpose(1, 2).reshape(P, U, -1)
            self.values[i].append(kept.cpu())

    def sketches(self, levels: int) -> list[LayerSketch]:
        out = []
        for chunks in self.values:
            values = torch.cat(chunks, dim=2)
            out.append(LayerSketch(quantile_sketch(values, levels),
                                   values.double().std(dim=2, unbiased=False).float()))
        return out


# Per member: one (quantiles [U, K], std [U]) per hidden layer, or None (unknown).
MemberSketch = list[tuple[torch.Tensor, torch.Tensor]] | None


class ShiftTracker:
    """The step-0 and previous-evaluation sketches of every member, per probed network, and
    the shift metrics of each new evaluation against them (module docstring)."""

    def __init__(self, levels: int, population_size: int | None = None):
        """`population_size`: None takes it from the first evaluation (or restore)."""
        self.levels, self.population_size = levels, population_size
        self.init: dict[str, list[MemberSketch]] = {}
        self.prev: dict[str, list[MemberSketch]] = {}
        self.fresh = True  # no evaluation yet and nothing restored: the next one is step 0

    def update(self, prefix: str, layers: Sequence[LayerSketch]) -> list[dict[str, float]]:
        """Per member, `<prefix>/h{i}/w1_init|w1_prev|w1_init_rel|w1_prev_rel` of this
        evaluation's `layers` against the references; then this evaluation becomes the
        previous one (and, at step 0, the step-0 one)."""
        P = self.population_size = layers[0].quantiles.shape[0]
        init = self.init.setdefault(prefix, [None] * P)
        prev = self.prev.setdefault(prefix, [None] * P)
        rows: list[dict[str, float]] = [{} for _ in range(P)]
        for k in range(P):
            now = [(layer.quantiles[k].clone(), layer.std[k].clone()) for layer in layers]
            if self.fresh:
                init[k] = now
            for name, reference in (("init", init[k]), ("prev", prev[k])):
                if reference is None or not _same_shapes(reference, now):
                    continue
                rows[k] |= layer_w1(f"{prefix}/h{{}}/w1_{name}", now, reference)
            prev[k] = now
        return rows

    def finish_evaluation(self) -> None:
        """Every probed network of this evaluation has been updated: step 0 is past."""
        self.fresh = False

    def member_states(self) -> list[dict]:
        """Each member's references, for its checkpoint (bnrepro.state.MemberState)."""
        return [{"levels": self.levels,
                 "init": {p: members[k] for p, members in self.init.items()},
                 "prev": {p: members[k] for p, members in self.prev.items()}}
                for k in range(self.population_size or 0)]

    def load_member_states(self, states: Sequence[dict | None]) -> None:
        """Restore each member's references (None: a checkpoint without them, or with
        sketches at other levels: that member logs no shift until it has references)."""
        self.fresh = False
        self.init, self.prev, self.population_size = {}, {}, len(states)
        for k, state in enumerate(states):
            usable = state is not None and state.get("levels") == self.levels
            for name, store in (("init", self.init), ("prev", self.prev)):
                for prefix, sketch in (state[name].items() if usable else ()):
                    store.setdefault(prefix, [None] * len(states))[k] = sketch


def layer_w1(key: str, now: list[tuple[torch.Tensor, torch.Tensor]],
             reference: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Per hidden layer i (from 1), `key`.format(i) = the mean over units of W1 between the
    (quantiles, std) sketches `now` and `reference`, and `key`_rel = their sum over units
    divided by the reference's summed stds (NaN when that is 0)."""
    row = {}
    for i, ((q, _), (q_ref, std_ref)) in enumerate(zip(now, reference, strict=True)):
        w1 = sketch_w1(q, q_ref).double()
        spread = std_ref.double().sum().item()
        name = key.format(i + 1)
        row[name] = w1.mean().item()
        row[f"{name}_rel"] = w1.sum().item() / spread if spread > 0 else math.nan
    return row


def successive_shift(prefix: str, before: Sequence[LayerSketch], now: Sequence[LayerSketch]
                     ) -> list[dict[str, float]]:
    """Per member, `<prefix>/h{i}/w1_step` and `w1_step_rel`: the shift between two successive
    training steps, `before` the sketches after step t - 1 and `now` those after step t, on
    the same probe inputs (module docstring)."""
    def member(layers: Sequence[LayerSketch], k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.quantiles[k], layer.std[k]) for layer in layers]
    return [layer_w1(f"{prefix}/h{{}}/w1_step", member(now, k), member(before, k))
            for k in range(now[0].quantiles.shape[0])]


def _same_shapes(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x[0].shape == y[0].shape for x, y in zip(a, b, strict=True))
