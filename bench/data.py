"""Datasets as uint8 tensors on the training device, nested stratified subsets, and on-device augmentation.

Names: fashion-mnist, fashion-mnist:<a>-<b> (only classes a..b, relabelled 0..b-a: e.g. pretrain on 0-4,
fine-tune on 5-9), cifar10, cifar100 (torchvision's python layout), imagefolder:<path> (<path>/train and
<path>/test or <path>/val, one folder per class), synthetic (random tensors: throughput and memory only).
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
STATS = {  # per-channel mean and std of the training images, in [0, 1] units
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class DataNotFoundError(FileNotFoundError):
    pass


@dataclass
class ImageData:
    name: str
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool  # whether horizontal flips are label-preserving

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1]

    def to(self, device: str) -> "ImageData":
        for field in ("train_x", "train_y", "test_x", "test_y"):
            setattr(self, field, getattr(self, field).to(device))
        return self


def _class_range(name: str) -> tuple[str, range | None]:
    match = re.fullmatch(r"(fashion-mnist):(\d)-(\d)", name)
    if match:
        first, last = int(match[2]), int(match[3])
        if first > last:
            raise ValueError(f"dataset {name!r}: class range {first}-{last} is empty")
        return match[1], range(first, last + 1)
    return name, None


def input_shape(dataset: str, in_chans: int, num_classes: int) -> tuple[int, int]:
    """(channels, classes) of a dataset without loading it; synthetic takes the given ones."""
    base, classes = _class_range(dataset)
    if base == "synthetic":
        return in_chans, num_classes
    if base == "fashion-mnist":
        return 1, len(classes) if classes else 10
    if base in ("cifar10", "cifar100"):
        return 3, int(base[5:])
    if base.startswith("imagefolder:"):
        root = _imagefolder_split(Path(base.split(":", 1)[1]), "train")
        return 3, len([d for d in root.iterdir() if d.is_dir()])
    raise ValueError(f"unknown dataset {dataset!r}")


# ------------------------------------------------------------------------------------- Fashion-MNIST


def fashion_mnist_search_path() -> list[Path]:
    """Where the idx files are looked for, in order."""
    places = []
    if os.environ.get("VITBENCH_DATA"):
        places.append(Path(os.environ["VITBENCH_DATA"]) / "fashion-mnist")
    places.append(Path("/usr/share/datasets/fashion-mnist"))  # Debian package dataset-fashion-mnist
    for root in _torchvision_roots():
        places.append(root / "FashionMNIST" / "raw")
    return places


def _torchvision_roots() -> list[Path]:
    roots = [Path(os.environ["VITBENCH_DATA"])] if os.environ.get("VITBENCH_DATA") else []
    return roots + [Path("data"), Path.home() / ".cache" / "torchvision"]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), gzipped or not -> uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({array.size} values for shape {shape})")
    return array.reshape(shape)


def _load_fashion_mnist() -> dict[str, np.ndarray]:
    places = fashion_mnist_search_path()
    for folder in places:
        found = {key: _find_idx(folder, stem) for key, stem in FASHION_FILES.items()}
        if all(found.values()):
            return {key: read_idx(path) for key, path in found.items()}
    download_root = Path.home() / ".cache" / "torchvision"
    try:
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(download_root, train=train, download=True)
        folder = download_root / "FashionMNIST" / "raw"
        return {key: read_idx(_find_idx(folder, stem)) for key, stem in FASHION_FILES.items()}
    except Exception as err:  # noqa: BLE001 - offline machines: the clear message below says what to do
        download_error = f"{type(err).__name__}: {str(err)[:200]}"
    searched = "\n".join(f"  - {p}" for p in places)
    raise DataNotFoundError(
        "Fashion-MNIST not found. Searched, in order:\n"
        f"{searched}\n"
        f"and a torchvision download into {download_root} failed ({download_error}).\n"
        "Get it in one of two ways:\n"
        "  1. Debian/Ubuntu: apt-get install dataset-fashion-mnist  (files in /usr/share/datasets/fashion-mnist)\n"
        "  2. put the four idx files (train-images-idx3-ubyte[.gz], ...) in $VITBENCH_DATA/fashion-mnist/, or "
        "let torchvision download them on a machine with internet access"
    )


def _fashion_mnist(class_range: range | None) -> ImageData:
    arrays = _load_fashion_mnist()
    tensors = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    train_x, test_x = tensors["train_x"].unsqueeze(1), tensors["test_x"].unsqueeze(1)  # (N, 1, 28, 28)
    train_y, test_y = tensors["train_y"].long(), tensors["test_y"].long()
    classes = FASHION_CLASSES
    if class_range is not None:
        keep_train = (train_y >= class_range.start) & (train_y < class_range.stop)
        keep_test = (test_y >= class_range.start) & (test_y < class_range.stop)
        train_x, train_y = train_x[keep_train], train_y[keep_train] - class_range.start
        test_x, test_y = test_x[keep_test], test_y[keep_test] - class_range.start
        classes = [FASHION_CLASSES[i] for i in class_range]
    mean, std = STATS["fashion-mnist"]
    return ImageData("fashion-mnist", train_x, train_y, test_x, test_y, list(classes), mean, std, hflip=True)


# ------------------------------------------------------------------------------- CIFAR and ImageFolder


def _cifar(name: str) -> ImageData:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    for root in _torchvision_roots():
        if (root / cls.base_folder).is_dir():
            splits = [cls(str(root), train=t, download=False) for t in (True, False)]
            break
    else:
        searched = ", ".join(str(r / cls.base_folder) for r in _torchvision_roots())
        raise DataNotFoundError(f"{name} not found (searched {searched}); download it with torchvision "
                                f"(torchvision.datasets.{cls.__name__}(root, download=True)) into one of those "
                                "roots, or set VITBENCH_DATA to the root that holds it")
    (train_x, train_y), (test_x, test_y) = (
        (torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets)) for s in splits
    )
    mean, std = STATS[name]
    return ImageData(name, train_x, train_y, test_x, test_y, list(splits[0].classes), mean, std, hflip=True)


def _imagefolder_split(root: Path, split: str) -> Path:
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataNotFoundError(f"imagefolder:{root}: no {' or '.join(names)} folder of class sub-folders in {root}")


def _imagefolder(root: Path, img_size: int) -> ImageData:
    """Every image loaded once, resized to img_size x img_size (a folder dataset has mixed sizes)."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    resize = v2.Compose([v2.PILToTensor(), v2.Resize(img_size), v2.CenterCrop(img_size)])
    splits = []
    for split in ("train", "test"):
        folder = ImageFolder(str(_imagefolder_split(root, split)), transform=resize)
        x = torch.stack([folder[i][0] for i in range(len(folder))]) if len(folder) else None
        if x is None:
            raise DataNotFoundError(f"imagefolder:{root}: the {split} split has no images")
        splits.append((x, torch.tensor(folder.targets), folder.classes))
    train_x = splits[0][0].float() / 255
    mean = tuple(train_x.mean(dim=(0, 2, 3)).tolist())
    std = tuple(train_x.std(dim=(0, 2, 3)).tolist())
    return ImageData(f"imagefolder:{root}", splits[0][0], splits[0][1], splits[1][0], splits[1][1], splits[0][2],
                     mean, std, hflip=True)


def load_dataset(name: str, img_size: int | None = None) -> ImageData:
    """Load a real dataset into memory (CPU tensors; call .to(device))."""
    base, class_range = _class_range(name)
    if base == "synthetic":
        raise ValueError("synthetic data is for throughput and memory only, never for accuracy")
    if base == "fashion-mnist":
        return _fashion_mnist(class_range)
    if base in ("cifar10", "cifar100"):
        return _cifar(base)
    if base.startswith("imagefolder:"):
        return _imagefolder(Path(base.split(":", 1)[1]), img_size or 224)
    raise ValueError(f"unknown dataset {name!r}")


# ---------------------------------------------------------------------------------------------- subsets


def subset_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed order of the training set whose every prefix is stratified: within each class a seeded random
    order, classes interleaved by rank / class size. Subsets are prefixes, hence nested (1k inside 5k)."""
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    key = torch.empty(len(labels), dtype=torch.float64)
    for c in labels.unique():
        members = (labels == c).nonzero().squeeze(1)
        ranks = torch.randperm(len(members), generator=gen).double()
        key[members] = (ranks + torch.rand(len(members), generator=gen, dtype=torch.float64)) / len(members)
    return torch.argsort(key)


def stratified_subset(labels: torch.Tensor, size: int | None, seed: int) -> torch.Tensor:
    """Indices of `size` training images (all when None), stratified by class and nested across sizes."""
    if size is None or size >= len(labels):
        return torch.arange(len(labels))
    return subset_order(labels, seed)[:size]


# ------------------------------------------------------------------------------------- augmentation


class DeviceAugment:
    """uint8 (B, C, H, W) batches -> normalised float (B, C, S, S) on the data's device: random crop with
    zero padding, horizontal flip where label-preserving, resize to the model's size S."""

    def __init__(self, data: ImageData, img_size: int, pad: int | None = None):
        height = data.train_x.shape[-1]
        self.pad = max(1, height // 8) if pad is None else pad
        self.hflip = data.hflip
        self.img_size = img_size
        device = data.train_x.device
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255 - self.mean) / self.std
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    def train(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        B, _, H, W = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * p + 1, (B,), device=x.device, generator=gen)
        dx = torch.randint(0, 2 * p + 1, (B,), device=x.device, generator=gen)
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, :]  # (B, 1, W)
        if self.hflip:
            flip = torch.rand(B, device=x.device, generator=gen) < 0.5
            cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
        batch = torch.arange(B, device=x.device)[:, None, None]
        crops = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, H, W, C)
        return self._normalise(crops.permute(0, 3, 1, 2))

    def eval(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalise(x)
