import gzip
import shutil

import pytest
import torch

from bnrepro.data.datasets import (
    MNIST_TEST_COUNTS,
    MNIST_TRAIN_COUNTS,
    DataUnavailableError,
    InputTransform,
    load_dataset,
    rows,
    tensor_digest,
    verify,
)
from bnrepro.data.sampling import fixed_subset


def test_mnist_is_the_official_set(mnist):
    assert mnist.train_images.shape == (60000, 1, 28, 28)
    assert mnist.test_images.shape == (10000, 1, 28, 28)
    assert mnist.train_images.dtype == torch.uint8
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(mnist.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test_labels).tolist() == MNIST_TEST_COUNTS


def test_verify_rejects_wrong_labels(mnist):
    bad = type(mnist)(mnist.name, mnist.train_images, mnist.train_labels.roll(1) * 0,
                      mnist.test_images, mnist.test_labels)
    with pytest.raises(ValueError, match="label counts"):
        verify(bad)


def test_cache_is_written_and_a_corrupt_cache_is_rebuilt(mnist, mirror_dir, tmp_path):
    """Catches: a truncated cache raising instead of being rebuilt; a non-atomic write."""
    ds = load_dataset("mnist", tmp_path, mirror_dir, download=False)
    cache = tmp_path / "mnist.pt"
    assert cache.is_file() and torch.equal(ds.train_images, mnist.train_images)
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated, as by a kill mid-copy
    again = load_dataset("mnist", tmp_path, mirror_dir, download=False)
    assert torch.equal(again.test_labels, mnist.test_labels)
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


def _rewrite_cache(cache, change) -> None:
    """Rewrite a cache well-formed (same keys, shapes, dtypes, label counts) after change(blob)."""
    blob = torch.load(cache, weights_only=True)
    change(blob)
    torch.save(blob, cache)


def _flip_pixels(blob: dict) -> None:
    # Invert a 4x4 patch of one training and one test image: shapes and labels still verify.
    for key in ("train_images", "test_images"):
        blob[key][123, 0, 10:14, 10:14] = 255 - blob[key][123, 0, 10:14, 10:14]


def test_cache_with_changed_pixels_is_detected_and_rebuilt(mnist, mirror_dir, tmp_path):
    """Catches: a cache checked only for shapes and label counts (the old check), a checksum
    stored but never compared, or one hashed over anything short of every tensor's bytes."""
    load_dataset("mnist", tmp_path, mirror_dir, download=False)
    cache = tmp_path / "mnist.pt"
    _rewrite_cache(cache, _flip_pixels)
    bad = torch.load(cache, weights_only=True)
    verify(type(mnist)("mnist", **{k: v for k, v in bad.items() if k != "sha256"}))  # well-formed
    assert not torch.equal(bad["train_images"], mnist.train_images)

    again = load_dataset("mnist", tmp_path, mirror_dir, download=False)
    assert torch.equal(again.train_images, mnist.train_images)
    assert torch.equal(again.test_images, mnist.test_images)
    # The rebuilt cache is right on its own: with no mirror and no download only it can serve.
    alone = load_dataset("mnist", tmp_path, tmp_path / "no-mirror", download=False)
    assert torch.equal(alone.train_images, mnist.train_images)
    assert torch.equal(alone.test_images, mnist.test_images)


@pytest.mark.parametrize("damage", ["pixels", "no checksum"])
def test_a_bad_cache_is_recorded_in_the_attempts(mnist, tmp_path, damage):
    """Catches: a bad cache served anyway, or one a pre-checksum cache (older code) accepted
    as is; the error must name the cache and say why it was refused."""
    cache = tmp_path / "mnist.pt"
    tensors = {k: getattr(mnist, k).clone() for k in
               ("train_images", "train_labels", "test_images", "test_labels")}
    blob = {**tensors, "sha256": tensor_digest(tensors)}
    if damage == "pixels":
        _flip_pixels(blob)
    else:
        del blob["sha256"]
    torch.save(blob, cache)
    with pytest.raises(DataUnavailableError) as err:  # no mirror, no download: nothing else
        load_dataset("mnist", tmp_path, tmp_path / "no-mirror", download=False)
    assert f"cache {cache}" in str(err.value)
    assert ("sha256 mismatch" if damage == "pixels" else "no sha256") in str(err.value)


def test_an_intact_cache_is_served_as_is(mnist, tmp_path):
    """Catches: a checksum that differs between writing and reading (order, dtype, device),
    which would rebuild the cache on every load, or fail with no other source."""
    tensors = {k: getattr(mnist, k) for k in
               ("train_images", "train_labels", "test_images", "test_labels")}
    torch.save({**tensors, "sha256": tensor_digest(tensors)}, tmp_path / "mnist.pt")
    ds = load_dataset("mnist", tmp_path, tmp_path / "no-mirror", download=False)
    assert torch.equal(ds.train_images, mnist.train_images)


def test_corrupt_mirror_file_is_reported(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "mnist").mkdir(parents=True)
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (mirror / "mnist" / f"{name}-ubyte.gz").write_bytes(gzip.compress(b"\0" * 100))
    with pytest.raises(DataUnavailableError, match="sha256 mismatch"):
        load_dataset("mnist", tmp_path / "root", mirror, download=False)
    assert not (tmp_path / "root" / "mnist.pt").exists()


def test_missing_data_says_what_was_tried_and_how_to_fix(tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        load_dataset("cifar10-jpeg", tmp_path, tmp_path / "empty-mirror")
    message = str(err.value)
    assert "empty-mirror" in message and "BNREPRO_DATA_MIRROR" in message


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="mnist"):
        load_dataset("imagenet")


def test_binarize_gives_binary_inputs(mnist):
    """Catches: the wrong threshold (any nonzero pixel, > 128, 0.5 on the 0..255 scale) and a
    plain scaling other than /255; real images alone (mostly 0 or 255) would miss both."""
    x = InputTransform(mnist, binarize=True)(mnist.train_images[:100])
    assert set(x.unique().tolist()) == {0.0, 1.0} and x.dtype == torch.float32
    every_level = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    binary = InputTransform(mnist, binarize=True)(every_level).flatten()
    assert binary.tolist() == [0.0] * 128 + [1.0] * 128  # pixel >= 128 (0.5 of the range) -> 1
    plain = InputTransform(mnist)(every_level).flatten()
    assert torch.equal(plain, torch.arange(256) / 255.0)


def test_rows_is_indexing_for_a_population_of_batches(mnist):
    """The trainer's batch gather: tensor[index] for index [P, B], images and labels alike.
    Catches a member's rows from another member's indices (a transposed or flattened order)
    and a lost image shape."""
    index = torch.randint(0, 60000, (3, 7), generator=torch.Generator().manual_seed(0))
    for tensor in (mnist.train_images, mnist.train_labels):
        assert torch.equal(rows(tensor, index), tensor[index])
    assert rows(mnist.train_images, index).shape == (3, 7, 1, 28, 28)


@pytest.mark.slow
def test_cifar10_jpeg_mirror_decodes(mirror_dir, tmp_path):
    ds = load_dataset("cifar10-jpeg", tmp_path, mirror_dir)
    assert ds.train_images.shape == (50000, 3, 32, 32)
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    x = InputTransform(ds, standardize=True)(ds.train_images[fixed_subset(50000, 5000)])
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1
    shutil.rmtree(tmp_path)
