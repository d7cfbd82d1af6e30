import gzip
import shutil

import pytest
import torch

from bnrepro.data import (
    MNIST_TEST_COUNTS,
    MNIST_TRAIN_COUNTS,
    DataUnavailableError,
    InputTransform,
    load_dataset,
    verify,
)
from bnrepro.sampling import fixed_subset


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


def test_cache_is_written_and_a_corrupt_cache_is_rebuilt(mnist, mirror, tmp_path):
    ds = load_dataset("mnist", tmp_path, mirror, download=False)
    cache = tmp_path / "mnist.pt"
    assert cache.is_file() and torch.equal(ds.train_images, mnist.train_images)
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated, as by a kill mid-copy
    again = load_dataset("mnist", tmp_path, mirror, download=False)
    assert torch.equal(again.test_labels, mnist.test_labels)
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left behind


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
    x = InputTransform(mnist, binarize=True)(mnist.train_images[:100])
    assert set(x.unique().tolist()) == {0.0, 1.0}
    plain = InputTransform(mnist)(mnist.train_images[:100])
    assert plain.max() <= 1.0 and plain.min() >= 0.0 and len(plain.unique()) > 2


@pytest.mark.slow
def test_cifar10_jpeg_mirror_decodes(mirror, tmp_path):
    ds = load_dataset("cifar10-jpeg", tmp_path, mirror)
    assert ds.train_images.shape == (50000, 3, 32, 32)
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    x = InputTransform(ds, standardize=True)(ds.train_images[fixed_subset(50000, 5000)])
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1
    shutil.rmtree(tmp_path)
