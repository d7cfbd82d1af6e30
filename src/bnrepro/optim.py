"""SGD with momentum and weight decay, one learning rate (and schedule) per population member.

Same update as torch.optim.SGD (dampening 0, no Nesterov): buf <- mu * buf + (g + wd * w);
w <- w - lr_t * buf. Members that have diverged are frozen: their weights and buffers stay as
they are. The rate decays exponentially and smoothly, lr_t = lr * lr_decay^((t - 1) /
lr_decay_steps) at step t = 1, 2, ... (Ioffe & Szegedy Sec. 4.2: Inception's rate "was decayed
exponentially"; lr_decay = 1 keeps it constant). It is a function of the step alone, so a
resumed run needs no schedule state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from bnrepro.state import cpu_copy


def per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[P] -> [P, 1, 1, ...], broadcastable against a parameter shaped like `like`."""
    return values.view(-1, *[1] * (like.dim() - 1))


class PopulationSGD:
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: torch.Tensor,
                 momentum: torch.Tensor, weight_decay: torch.Tensor,
                 lr_decay: torch.Tensor | None = None, lr_decay_steps: torch.Tensor | None = None):
        self.params = [p for p in params if p.requires_grad]
        self.base_lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.lr = lr  # the rate of the current step (set_step)
        # log(lr_decay) / lr_decay_steps per member, in float64 so that thousands of steps
        # of decay do not accumulate float32 rounding; None when no member decays.
        self.log_decay_per_step = None
        if lr_decay is not None and bool((lr_decay != 1).any()):
            self.log_decay_per_step = lr_decay.double().log() / lr_decay_steps.double()
        # Skipping the terms that are zero for every member saves whole passes over the weights,
        # which is most of the optimizer's cost (it is memory-bound).
        self.use_momentum = bool((momentum != 0).any())
        self.use_weight_decay = bool((weight_decay != 0).any())
        self.buffers = [torch.zeros_like(p) for p in self.params] if self.use_momentum else []
        self._momentum_views = [per_member(momentum, p) for p in self.params]
        self._decay_views = [per_member(weight_decay, p) for p in self.params]

    def set_step(self, step: int) -> None:
        """Use the rates of training step `step` (1-based) for the next update."""
        if self.log_decay_per_step is not None:
            factor = (self.log_decay_per_step * (step - 1)).exp()
            self.lr = (self.base_lr.double() * factor).to(self.base_lr.dtype)

    @property
    def lr(self) -> torch.Tensor:
        """The rate of each member at the current step [P]."""
        return self._lr

    @lr.setter
    def lr(self, value: torch.Tensor) -> None:
        self._lr = value
        # -lr per member, shaped for each parameter, made again only when the rate changes: a
        # dozen small views and a negation each step are a measurable part of a small net's
        # step on the CPU
        self._neg_lr_views: list[torch.Tensor] | None = None

    def _neg_lr(self) -> list[torch.Tensor]:
        if self._neg_lr_views is None:
            neg_lr = -self.lr
            self._neg_lr_views = [per_member(neg_lr, p) for p in self.params]
        return self._neg_lr_views

    @torch.no_grad()
    def step(self, active: torch.Tensor | None = None) -> None:
        """Update the members where `active` (bool [P]; None: every member) is set; leave the
        others, weights and momentum buffers, bit-identical (their weights or grads may be inf
        or NaN, and 0 * inf is NaN, so they are masked out rather than multiplied by a zero
        rate). One foreach call updates every parameter: the same floats as one addcmul_ each."""
        torch._foreach_addcmul_(self.params, list(self._directions(active, in_place=True)),
                                self._neg_lr())

    @torch.no_grad()
    def next_values(self, active: torch.Tensor) -> list[torch.Tensor]:
        """The weights `step(active)` would leave, one tensor per parameter (in `params`
        order), bit-identical to them, computed without changing anything: weights, grads
        and momentum buffers stay as they are (measures.ics reads the update of step t
        before the trainer applies it)."""
        return [p.addcmul(direction, neg_lr)
                for p, direction, neg_lr in zip(self.params,
                                                self._directions(active, in_place=False),
                                                self._neg_lr(), strict=True)]

    def _directions(self, active: torch.Tensor | None, in_place: bool
                    ) -> Iterator[torch.Tensor]:
        """Per parameter, the update direction buf_new = mu * buf + (g + wd * w) (g where
        momentum is 0 for all), zero for frozen members. `in_place` stores buf_new in the
        momentum buffers (step); otherwise they are only read. Both ways compute the same
        floats (the same operations in the same order), so next_values matches step."""
        # Where every member is active the masking is skipped (the same floats); reading that
        # back costs nothing on the CPU but would stall a GPU each step (train.py's
        # divergence_check_every), so there the mask is applied as it is.
        all_active = active is None or (active.device.type == "cpu" and bool(active.all()))
        frozen = None if all_active else ~active
        for i, p in enumerate(self.params):
            grad = p.grad
            if frozen is not None:
                grad = grad.masked_fill(per_member(frozen, p), 0.0)
            if self.use_weight_decay:
                decay = p if frozen is None else p.masked_fill(per_member(frozen, p), 0.0)
                grad = grad.addcmul(decay, self._decay_views[i])
            if self.use_momentum:
                buf = self.buffers[i]
                if frozen is None:
                    grad = buf.mul_(self._momentum_views[i]).add_(grad) if in_place \
                        else buf.mul(self._momentum_views[i]).add_(grad)
                else:
                    grad = torch.where(per_member(frozen, p), buf,
                                       buf * self._momentum_views[i] + grad)
                    if in_place:
                        buf.copy_(grad)
                    grad = grad.masked_fill(per_member(frozen, p), 0.0)
            yield grad

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"buffers": [b.clone() for b in self.buffers]}

    def load_state_dict(self, state: dict) -> None:
        for buf, saved in zip(self.buffers, state["buffers"], strict=True):
            buf.copy_(saved)

    def member_states(self) -> list[dict]:
        """Each member's momentum buffers, in `params` order (bnrepro.state.MemberState); none
        where no member of the population has momentum."""
        return [{"momentum": [cpu_copy(b[k]) for b in self.buffers]}
                for k in range(len(self.base_lr))]

    def load_member_states(self, states: Sequence[dict | None]) -> None:
        """A member saved without buffers (its population had momentum 0 everywhere) gets
        zeros: with its own momentum 0 the buffer's old value never enters its update."""
        for k, state in enumerate(states):
            saved = state["momentum"]
            for i, buf in enumerate(self.buffers):
                buf[k].copy_(saved[i] if saved else torch.zeros_like(buf[k]))
