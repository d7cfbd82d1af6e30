"""Datasets as whole in-memory uint8 tensors: load once, batch by indexing.

Sources are tried in order: the prepared cache under `root`, an offline mirror directory
(layout of ../shared/datasets, see its README), then torchvision's download. Whatever is read
is verified (shapes, label counts, checksums where known) before it is cached or used. The
cache carries a sha256 of its own tensors, so a well-formed cache with changed pixels is caught.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bnrepro.atomic import atomic_torch_save

# Per-class counts of the official splits: a cheap, exact fingerprint of the labels.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
MIRROR_SHA256 = {  # from ../shared/datasets/README.md
    "mnist/train-images-idx3-ubyte.gz":
        "7ff28fd295f802eefc6d40e461175dfe4b969b1842b2abc8c6dc8c20711cf79f",
    "mnist/train-labels-idx1-ubyte.gz":
        "81a978ae83d39ffdba0db3ce2fcaf80a8921e9629e874428996a2b03242d4b2a",
    "mnist/t10k-images-idx3-ubyte.gz":
        "197e111ae341b0770be9011ac5e622d0e6cd1c640b32eb0de5dc1dd26cc6e182",
    "mnist/t10k-labels-idx1-ubyte.gz":
        "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
    "cifar10-jpeg.tar.gz": "efac85c8ed52f4ead1e1f1b670d8dcf435d551fccebdd8b6365e0a01a504f3a4",
}
# Shape of one image and the split sizes, per dataset name.
SPECS = {
    "mnist": ((1, 28, 28), 60_000, 10_000),
    "cifar10": ((3, 32, 32), 50_000, 10_000),
    "cifar10-jpeg": ((3, 32, 32), 50_000, 10_000),
}


class DataUnavailableError(RuntimeError):
    """No source could provide the dataset; the message says which were tried and what to do."""


@dataclass
class Dataset:
    """Whole splits as tensors: images uint8 [N, C, H, W], labels int64 [N]."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.name,
            *(t.to(device) for t in (self.train_images, self.train_labels)),
            *(t.to(device) for t in (self.test_images, self.test_labels)),
        )


def rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor[index] for an integer index of any shape: the same values, an image copied as one
    block (index_select) where advanced indexing goes element by element (`make bench-profile`:
    a 64 x 60 batch of MNIST images, several times faster). A 1-D tensor (labels) is indexed as
    usual: one call is cheaper there."""
    if tensor.dim() == 1:
        return tensor[index]
    picked = tensor.flatten(1).index_select(0, index.flatten())
    return picked.view(*index.shape, *tensor.shape[1:])


def verify(ds: Dataset) -> None:
    """Raise ValueError unless the tensors have the shapes, dtypes and labels of `ds.name`."""
    shape, n_train, n_test = SPECS[ds.name]
    for split, images, labels, n in (
        ("train", ds.train_images, ds.train_labels, n_train),
        ("test", ds.test_images, ds.test_labels, n_test),
    ):
        if images.dtype != torch.uint8 or tuple(images.shape) != (n, *shape):
            raise ValueError(f"{ds.name} {split} images: {images.dtype} {tuple(images.shape)}, "
                             f"expected uint8 {(n, *shape)}")
        if tuple(labels.shape) != (n,) or labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{ds.name} {split} labels: wrong shape {tuple(labels.shape)} "
                             "or values outside 0..9")
        counts = torch.bincount(labels, minlength=10).tolist()
        expected = {"mnist": {"train": MNIST_TRAIN_COUNTS, "test": MNIST_TEST_COUNTS}}.get(
            ds.name, {"train": [n_train // 10] * 10, "test": [n_test // 10] * 10})[split]
        if counts != expected:
            raise ValueError(f"{ds.name} {split} label counts {counts} != {expected}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


TENSOR_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and contiguous bytes, in TENSOR_KEYS order.

    Shapes and label counts alone miss changed pixels; the header fields make a reshaped or
    retyped tensor with the same bytes fail too. About 0.1 s for MNIST's 47 MB.
    """
    digest = hashlib.sha256()
    for key in TENSOR_KEYS:
        t = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return digest.hexdigest()


def _load_cache(name: str, cache: Path) -> Dataset:
    """Read a cache written by load_dataset; raise unless its checksum and contents verify."""
    blob = torch.load(cache, weights_only=True)
    stored = blob.pop("sha256", None)
    if stored is None:  # written by code older than the checksum: cannot be trusted
        raise ValueError("no sha256 in the cache (written by older code?)")
    if set(blob) != set(TENSOR_KEYS):
        raise ValueError(f"cache holds {sorted(blob)}, expected {sorted(TENSOR_KEYS)}")
    actual = tensor_digest(blob)
    if actual != stored:
        raise ValueError(f"sha256 mismatch: stored {stored[:12]}..., tensors hash to "
                         f"{actual[:12]}... (corrupted copy?)")
    ds = Dataset(name, **blob)
    verify(ds)
    return ds


def _read_idx(raw: bytes) -> np.ndarray:
    """Parse an IDX file (big-endian magic, dims, uint8 payload)."""
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (2049, 2051):
        raise ValueError(f"not an IDX uint8 file (magic {magic})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    payload = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise ValueError(f"IDX payload has {payload.size} bytes, header says {dims}")
    return payload.reshape(dims)


def _checked_mirror_file(mirror: Path, rel: str) -> Path:
    path = mirror / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing")
    if sha256(path) != MIRROR_SHA256[rel]:
        raise ValueError(f"{path}: sha256 mismatch (truncated or corrupted copy?)")
    return path


def _mnist_from_mirror(mirror: Path) -> Dataset:
    def idx(name: str) -> torch.Tensor:
        raw = gzip.decompress(_checked_mirror_file(mirror, f"mnist/{name}-ubyte.gz").read_bytes())
        return torch.from_numpy(_read_idx(raw).copy())

    return Dataset(
        "mnist",
        idx("train-images-idx3").unsqueeze(1), idx("train-labels-idx1").long(),
        idx("t10k-images-idx3").unsqueeze(1), idx("t10k-labels-idx1").long(),
    )


def _cifar10_jpeg_from_mirror(mirror: Path) -> Dataset:
    """Decode the JPEG ImageFolder tarball straight from the archive (about 15 s on one core)."""
    from PIL import Image
    from tqdm import tqdm

    archive = _checked_mirror_file(mirror, "cifar10-jpeg.tar.gz")
    splits: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")),
                         key=lambda m: m.name)
        for member in tqdm(members, desc="decoding cifar10-jpeg", unit="img", leave=False,
                           disable=None):
            _, split, cls, _ = member.name.split("/")[-4:]
            with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                splits[split][0].append(np.asarray(img.convert("RGB")))
            splits[split][1].append(CIFAR10_CLASSES.index(cls))

    def stack(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = splits[split]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(labels, dtype=torch.long)

    return Dataset("cifar10-jpeg", *stack("train"), *stack("test"))


def _from_torchvision(name: str, download_dir: Path) -> Dataset:
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]
    train = cls(str(download_dir), train=True, download=True)
    test = cls(str(download_dir), train=False, download=True)

    def images(split) -> torch.Tensor:
        data = torch.as_tensor(np.asarray(split.data))
        return data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2).contiguous()

    return Dataset(name, images(train), torch.as_tensor(train.targets).long(),
                   images(test), torch.as_tensor(test.targets).long())


def load_dataset(name: str, root: str | Path = "data", mirror: str | Path | None = None,
                 download: bool = True) -> Dataset:
    """Load `name` (mnist, cifar10, cifar10-jpeg) as verified uint8 tensors, caching under root.

    `mirror` defaults to $BNREPRO_DATA_MIRROR; `download=False` never touches the network.
    """
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(SPECS)}")
    root = Path(root)
    cache = root / f"{name}.pt"
    mirror = mirror or os.environ.get("BNREPRO_DATA_MIRROR") or None
    attempts: list[str] = []

    if cache.is_file():
        try:
            return _load_cache(name, cache)
        except Exception as err:  # a bad cache is rebuilt from the next source
            attempts.append(f"cache {cache}: {type(err).__name__}: {err}")

    sources = []
    if mirror and name in ("mnist", "cifar10-jpeg"):
        reader = _mnist_from_mirror if name == "mnist" else _cifar10_jpeg_from_mirror
        sources.append((f"mirror {mirror}", lambda: reader(Path(mirror))))
    elif not mirror:
        attempts.append("mirror: not set (data.mirror or BNREPRO_DATA_MIRROR)")
    else:  # say so, or the error lists nothing tried for true CIFAR-10 with download=False
        attempts.append(f"mirror {mirror}: holds no {name} (only mnist and cifar10-jpeg; "
                        "cifar10-jpeg is NOT CIFAR-10)")
    if name != "cifar10-jpeg" and not download:
        attempts.append("torchvision download: off (download=False)")
    elif name != "cifar10-jpeg":
        sources.append((f"torchvision download into {root / 'raw'}",
                        lambda: _from_torchvision(name, root / "raw")))

    for label, read in sources:
        try:
            ds = read()
            verify(ds)
        except Exception as err:
            attempts.append(f"{label}: {type(err).__name__}: {err}")
            continue
        tensors = {k: getattr(ds, k).contiguous() for k in TENSOR_KEYS}
        atomic_torch_save({**tensors, "sha256": tensor_digest(tensors)}, cache)
        return ds

    raise DataUnavailableError(
        f"could not load dataset {name!r}. Tried:\n  - " + "\n  - ".join(attempts)
        + "\nTo fix: connect to the internet for torchvision's download, or point "
        "BNREPRO_DATA_MIRROR (or data.mirror=...) at a folder laid out like ../shared/datasets "
        f"(mnist/*.gz, cifar10-jpeg.tar.gz), or place a prepared {cache}."
    )


class InputTransform:
    """uint8 images [..., C, H, W] -> float network inputs, applied per batch on the fly.

    MNIST: scaled to [0, 1], or thresholded at 0.5 when `binarize` (the paper's Fig. 1 feeds
    "28x28 binary images"). CIFAR: per-channel standardisation with training-set statistics.
    """

    def __init__(self, ds: Dataset, binarize: bool = False, standardize: bool = False):
        self.binarize = binarize
        self.mean = self.std = None
        if standardize:
            x = ds.train_images.float().div_(255)
            self.mean = x.mean(dim=(0, 2, 3)).view(-1, 1, 1)
            self.std = x.std(dim=(0, 2, 3)).view(-1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.binarize:  # the comparison written straight into floats: one pass, not two
            return torch.ge(images, 128, out=torch.empty(images.shape, device=images.device))
        x = images.float().div_(255)
        if self.mean is not None:
            if self.mean.device != x.device:  # moved once, not copied with every batch
                self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
            x = x.sub_(self.mean).div_(self.std)  # in place: the same floats, no new batch
        return x


def first_available(names: list[str]) -> str:
    """The first dataset name that loads (cache, mirror or download); raises if none does."""
    errors = []
    for name in names:
        try:
            load_dataset(name)
            return name
        except DataUnavailableError as err:
            errors.append(str(err))
    raise DataUnavailableError("\n".join(errors))


def main() -> None:
    """`python -m bnrepro.data A B ...`: print the first of the dataset names that loads."""
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # torchvision's download chatter
        name = first_available(sys.argv[1:])
    print(name)
