"""The loss landscape along the gradient (Santurkar et al. 2018, Sec. 3.2, App. A.2.2, Fig. 4).

At step t, on the step's batch, with g = grad L(x_t) and eta the member's rate at step t,
the points x_j = x_t - m_j * eta * g for step-length multipliers m_1 < ... < m_M ("steps of
different lengths in the direction of the gradient"; VGG: m in [1/2, 4], DLN: [1/100, 30]).
Per member:
- variation of the loss (Fig. 4a, "the variation (shaded region) in loss as we move in the
  gradient direction"): L(x_j) over the points, logged as its min, max and range max - min.
  The current point x_t is not among them (the paper's step lengths start at 1/2 x the rate);
  its loss L(x_t) is logged beside them (`loss`), so a figure can include it.
- gradient predictiveness (Fig. 4b, a shaded range): ||g - grad L(x_j)||_2 over the points,
  logged as its min and max.
- "effective" beta-smoothness (Fig. 4c, "the maximum difference (in l2-norm) in gradient
  over distance moved in that direction"): max_j ||g - grad L(x_j)|| / ||x_t - x_j||, with
  ||x_t - x_j|| = m_j * eta * ||g||, the length of the step.
Every trainable parameter moves (BN's gamma and beta too: the landscape is the loss over all
the weights training updates). L is the step's training loss: its batch, dropout masks and norm
noise, batch statistics in the norms (replay.py); the data loss, without weight decay. A point
where the loss is not finite makes its summaries NaN (logged as null), not silently skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from bnrepro.measures.replay import LossFn
from bnrepro.measures.vectors import member_norm

if TYPE_CHECKING:
    from bnrepro.measures.context import MeasureContext

SPACINGS = ("log", "linear")


def step_multipliers(low: float, high: float, points: int, spacing: str = "log"
                     ) -> torch.Tensor:
    """[points] float64 step-length multipliers from low to high (both included), evenly
    spaced on a log or a linear scale; one point is `low` itself."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if not (0 < low <= high and points >= 1):
        raise ValueError(f"need 0 < low <= high and points >= 1, got {low}, {high}, {points}")
    if points == 1:
        return torch.tensor([float(low)], dtype=torch.float64)
    if spacing == "log":
        return torch.logspace(math.log10(low), math.log10(high), points, dtype=torch.float64)
    return torch.linspace(low, high, points, dtype=torch.float64)


@dataclass(frozen=True)
class Landscape:
    """What `landscape` saw, per member (rows) and point (columns); float64."""
    multipliers: torch.Tensor  # [M] step lengths in units of the member's rate
    loss_at_start: torch.Tensor  # [P] L(x_t)
    grad_norm: torch.Tensor  # [P] ||g||
    losses: torch.Tensor  # [P, M] L(x_j)
    grad_changes: torch.Tensor  # [P, M] ||g - grad L(x_j)||
    distances: torch.Tensor  # [P, M] ||x_t - x_j|| = m_j * lr * ||g||

    def summary(self) -> dict[str, torch.Tensor]:
        """The per-member numbers the paper plots, [P] each (see the module docstring)."""
        loss_max, loss_min = self.losses.max(1).values, self.losses.min(1).values
        return {"loss": self.loss_at_start, "loss_min": loss_min, "loss_max": loss_max,
                "loss_range": loss_max - loss_min, "grad_norm": self.grad_norm,
                "grad_change_min": self.grad_changes.min(1).values,
                "grad_change_max": self.grad_changes.max(1).values,
                "beta": (self.grad_changes / self.distances).max(1).values}


def landscape(loss_fn: LossFn, params: Mapping[str, torch.Tensor],
              grads: Mapping[str, torch.Tensor], lr: torch.Tensor,
              multipliers: torch.Tensor, loss: torch.Tensor | None = None) -> Landscape:
    """Walk from x_t = `params` along -`grads` by multipliers[j] * lr (per member).

    loss_fn(weights) -> per-member loss [P] (names not given keep their current values);
    params: the weights that move, by name, [P, ...] each; grads: the loss's gradient at
    params, the same names; lr: [P] each member's rate; multipliers: [M]; loss: L(x_t) [P]
    if known (the trainer's forward pass computed it), else computed here.
    One forward and backward pass per point; nothing is written to params or their .grad.
    """
    names = list(params)
    start = {name: params[name].detach() for name in names}
    g = [grads[name].detach() for name in names]
    if loss is None:
        with torch.no_grad():
            loss = loss_fn(start)
    losses, grad_changes = [], []
    for m in multipliers.tolist():
        step = (lr.double() * m).to(g[0].dtype)
        point = {name: (x - step.view(-1, *[1] * (x.dim() - 1)) * gx).requires_grad_()
                 for (name, x), gx in zip(start.items(), g, strict=True)}
        point_loss = loss_fn(point)
        point_grads = torch.autograd.grad(point_loss.sum(), list(point.values()))
        losses.append(point_loss.detach().double())
        # The difference in the weights' precision (exact where the values are close), the
        # norm accumulated in float64.
        grad_changes.append(member_norm([a - b for a, b in zip(g, point_grads, strict=True)]))
    grad_norm = member_norm(g)
    multipliers = multipliers.double()
    # The length of each step taken: m * lr * ||g|| (what the weights moved by, up to their
    # rounding, which for steps far below the weights' own precision would be all there is).
    distances = (lr.double().to(grad_norm.device) * grad_norm)[:, None] * \
        multipliers.to(grad_norm.device)[None, :]
    return Landscape(multipliers=multipliers, loss_at_start=loss.detach().double(),
                     grad_norm=grad_norm, losses=torch.stack(losses, 1),
                     grad_changes=torch.stack(grad_changes, 1), distances=distances)


def run_landscape(ctx: MeasureContext, knobs: Mapping) -> dict[str, torch.Tensor]:
    """The trainer's hook: `landscape/<summary>` [P] each (Landscape.summary), plus
    `landscape/x<m>/loss` and `landscape/x<m>/grad_change` per multiplier m when
    knobs.per_point (Fig. 11: gradient change against step length)."""
    low, high = knobs["step_range"]
    result = landscape(ctx.loss_fn, ctx.params, ctx.grads, ctx.lr,
                       step_multipliers(low, high, knobs["points"], knobs["spacing"]),
                       ctx.loss)
    out = {f"landscape/{key}": value for key, value in result.summary().items()}
    if knobs.get("per_point"):
        for j, m in enumerate(result.multipliers.tolist()):
            out[f"landscape/x{m:.4g}/loss"] = result.losses[:, j]
            out[f"landscape/x{m:.4g}/grad_change"] = result.grad_changes[:, j]
    return out


def landscape_problems(knobs: Mapping, num_layers: int | None) -> list[str]:
    """Bad values of measures.landscape beyond its schedule."""
    problems = []
    step_range, points = knobs.get("step_range"), knobs.get("points")
    numbers = (not isinstance(step_range, str) and hasattr(step_range, "__iter__")
               and len(list(step_range)) == 2
               and all(isinstance(v, int | float) and not isinstance(v, bool)
                       for v in step_range))
    if not (numbers and 0 < step_range[0] <= step_range[1]):
        shown = list(step_range) if hasattr(step_range, "__iter__") else step_range
        problems.append(f"measures.landscape.step_range={shown!r} is not allowed: must be "
                        "[low, high] with 0 < low <= high (multiples of the learning rate)")
    if not (isinstance(points, int) and not isinstance(points, bool) and points >= 1):
        problems.append(f"measures.landscape.points={points!r} is not allowed: must be an "
                        "integer >= 1")
    if knobs.get("spacing") not in SPACINGS:
        problems.append(f"measures.landscape.spacing={knobs.get('spacing')!r} is not allowed: "
                        f"choose one of {list(SPACINGS)}")
    if not isinstance(knobs.get("per_point"), bool):
        problems.append(f"measures.landscape.per_point={knobs.get('per_point')!r} is not "
                        "allowed: must be true or false")
    return problems
