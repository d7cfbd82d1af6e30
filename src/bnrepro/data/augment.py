"""Training-time augmentation as tensor ops on a population's batch: random crops of a
zero-padded image and horizontal flips, drawn per member and example from the member's own
"augment" stream (so a member augments the same way alone or in any population).

Applied to the uint8 images before the input transform, as torchvision's
RandomCrop(padding=p) + RandomHorizontalFlip would be; evaluation never augments.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bnrepro.seeding import generator, load_stream_states, stream_states


class BatchAugment:
    """Per member k: crop offsets uniform in [-crop_padding[k], crop_padding[k]] pixels on each
    axis (the padding is black), and a flip with probability 1/2 where flip[k]."""

    def __init__(self, seeds: Sequence[int], crop_padding: Sequence[int], flip: Sequence[bool],
                 device: torch.device | str = "cpu"):
        """The streams of members that augment live on `device` (seeding.on_device); those of
        members that never draw stay on the CPU, so their checkpoints resume anywhere."""
        if any(p < 0 for p in crop_padding):
            raise ValueError(f"augment.crop_padding must be >= 0, got {list(crop_padding)}")
        self.crop_padding, self.flip = [int(p) for p in crop_padding], [bool(f) for f in flip]
        self.generators = [generator(s, "augment", device if pad or f else "cpu")
                           for s, pad, f in zip(seeds, self.crop_padding, self.flip, strict=True)]

    @property
    def active(self) -> bool:
        return any(self.crop_padding) or any(self.flip)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images [P, B, C, H, W] -> the same shape, each image cropped and flipped."""
        if not self.active:
            return images
        P, B, C, H, W = images.shape
        shifts, flips = [], []
        for g, pad, flip in zip(self.generators, self.crop_padding, self.flip, strict=True):
            # Draws only what the member uses: its stream does not depend on the others' knobs.
            # Drawn on the stream's device (the training device for those that draw).
            shifts.append(torch.randint(-pad, pad + 1, (B, 2), generator=g, device=g.device)
                          .to(images.device) if pad
                          else torch.zeros(B, 2, dtype=torch.long, device=images.device))
            flips.append((torch.rand(B, generator=g, device=g.device) < 0.5).to(images.device)
                         if flip else torch.zeros(B, dtype=torch.bool, device=images.device))
        shift, flipped = torch.cat(shifts), torch.cat(flips)
        margin = max(self.crop_padding)
        padded = F.pad(images.reshape(P * B, C, H, W), (margin,) * 4)
        rows = margin + shift[:, :1] + torch.arange(H, device=images.device)  # [N, H]
        cols = margin + shift[:, 1:] + torch.arange(W, device=images.device)  # [N, W]
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
        n = torch.arange(P * B, device=images.device)
        out = padded[n[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
        # NCHW, as unaugmented batches come: gathered [N, H, W, C], the batch would reach the
        # convs as channels_last, and convs keep their input's layout, so every layer would
        # run torch's channels_last kernels, whose BN backward is several times slower on the
        # CPU (`make bench-profile`: the plain loop's two layouts); the copy costs a pass over
        # the uint8 batch. (Until this copy, augmented runs trained channels_last throughout.)
        return out.permute(0, 3, 1, 2).reshape(P, B, C, H, W).contiguous()

    def member_states(self) -> list[dict]:
        """Each member's stream (bnrepro.state.MemberState)."""
        return stream_states(self.generators)

    def load_member_states(self, states: Sequence[dict | None]) -> None:
        load_stream_states(self.generators, states)
