"""Training augmentation: each output image is a crop (and maybe a flip) of the zero-padded
input, drawn per member from the member's own seed, resumable, and never used at evaluation."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from bnrepro.data.augment import BatchAugment

IMAGES = torch.randint(1, 256, (2, 64, 3, 8, 8), dtype=torch.uint8)  # no zeros: padding shows


def explain(out: torch.Tensor, source: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flip) that turns `source` into `out`, by brute force."""
    padded = F.pad(source, (pad,) * 4)
    H, W = source.shape[-2:]
    found = []
    shifts = range(-pad, pad + 1)
    for dy, dx, flip in itertools.product(shifts, shifts, (False, True)):
        crop = padded[:, pad + dy:pad + dy + H, pad + dx:pad + dx + W]
        if torch.equal(crop.flip(-1) if flip else crop, out):
            found.append((dy, dx, flip))
    return found


def test_every_image_is_a_crop_and_flip_of_its_own_padded_input_and_all_of_them_occur():
    out = BatchAugment([0, 1], [2, 2], [True, True])(IMAGES)
    seen = set()
    for k, b in itertools.product(range(2), range(64)):
        found = explain(out[k, b], IMAGES[k, b], 2)
        assert found, (k, b)  # not a shifted/flipped copy of its own image: a mix-up
        seen.update(found)
    # 25 offsets x 2 flips, 128 draws: most combinations occur, including the extremes.
    assert {(-2, -2), (2, 2)} <= {(dy, dx) for dy, dx, _ in seen}
    assert {True, False} == {flip for *_, flip in seen}
    # NCHW like an unaugmented batch, so the net runs the same (NCHW) kernels on it
    assert out.is_contiguous()


def test_flips_alone_keep_the_image_and_mirror_about_half():
    out = BatchAugment([3], [0], [True])(IMAGES[:1])
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out[0], IMAGES[0], strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out[0], IMAGES[0], strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 <= sum(flipped) <= 48  # Binomial(64, 1/2): outside this with p < 1e-4


def test_no_augmentation_is_the_identity_and_draws_nothing():
    aug = BatchAugment([0], [0], [False])
    before = aug.generators[0].get_state()
    assert torch.equal(aug(IMAGES[:1]), IMAGES[:1])
    assert torch.equal(aug.generators[0].get_state(), before)


def test_a_member_augments_as_it_would_alone_and_seeds_differ():
    population = BatchAugment([5, 6, 7], [2, 0, 1], [True, True, False])
    images = torch.cat([IMAGES, IMAGES[:1]])
    together = [population(images) for _ in range(3)]
    for k, (seed, pad, flip) in enumerate([(5, 2, True), (6, 0, True), (7, 1, False)]):
        alone = BatchAugment([seed], [pad], [flip])
        for step in range(3):
            assert torch.equal(together[step][k], alone(images[k:k + 1])[0]), (k, step)
    other_seed = BatchAugment([8], [2], [True])(images[:1])[0]
    assert not torch.equal(other_seed, BatchAugment([5], [2], [True])(images[:1])[0])


def test_the_stream_resumes_from_a_saved_state():
    aug = BatchAugment([0, 1], [2, 1], [True, False])
    aug(IMAGES)
    states = aug.member_states()
    expected = aug(IMAGES)
    resumed = BatchAugment([0, 1], [2, 1], [True, False])
    resumed.load_member_states(states)
    assert torch.equal(resumed(IMAGES), expected)


def test_negative_padding_is_refused():
    with pytest.raises(ValueError, match="crop_padding"):
        BatchAugment([0], [-1], [False])
