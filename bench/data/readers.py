"""Dataset readers and the dataset registry: one table (name -> loader, shape, normalisation), the IDX,
CIFAR and ImageFolder readers, and the split types they return (uint8 tensors).

Names: fashion-mnist, fashion-mnist:<a>-<b> (classes a..b only, relabelled 0..b-a: pretrain on 0-4, fine-tune on
5-9), cifar10, cifar100 (torchvision's python layout), imagefolder:<path> (<path>/train and <path>/test or
<path>/val, one folder per class; a relative path is taken from the directory `bench` was started in),
synthetic (random tensors: throughput and memory only).

Both splits of a dataset come from one place, and the files are checked against each other (shapes and counts
from the IDX headers) before anything trains on them. Loading through the decoded cache: bench/data/cache.py.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


class DataNotFoundError(FileNotFoundError):
    pass


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) uint8
    y: torch.Tensor | None  # (N,) int64; None for unlabeled images (self-supervised pretraining)

    def to(self, device: str) -> "Split":
        return Split(self.x.to(device), None if self.y is None else self.y.to(device))


@dataclass
class TrainData:
    """A dataset's training split (never its test split) and how to read it."""

    name: str
    train: Split
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per-channel, in [0, 1] units
    std: tuple[float, ...]
    hflip: bool  # whether horizontal flips preserve the label
    source: str = ""  # where the dataset was found
    checksum: str = ""  # sha256 of the files the training split was read from

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.train.x.shape[1]

    def to(self, device: str) -> "TrainData":
        self.train = self.train.to(device)
        return self


@dataclass(frozen=True)
class DatasetKind:
    form: str  # how a user writes it
    pattern: re.Pattern
    shape: Callable[[re.Match], tuple[int, int]]  # (in_chans, num_classes) without loading the images
    train_images: Callable[[re.Match], int]  # images of the training split, without loading them
    load: Callable[[re.Match, str, int], tuple[Split, tuple[str, ...]]]  # (match, split, img_size)
    files: Callable[[re.Match, str, bool], tuple[Path, list[Path]]]  # (match, split, images only) -> (place, files)
    stats: Callable[[re.Match, Split], tuple[tuple[float, ...], tuple[float, ...]]]  # (mean, std)
    hflip: bool = True
    images: Callable[[re.Match, str, int], torch.Tensor] | None = None  # images alone, no label file opened
    by_content: bool = True  # checksum of the files' bytes; False: of their names, sizes and modification times


# ------------------------------------------------------------------------------------- Fashion-MNIST


def _named_root() -> Path | None:
    """$VITBENCH_DATA: a folder the user named, searched alone (used, or refused saying what it lacks)."""
    return Path(os.environ["VITBENCH_DATA"]) if os.environ.get("VITBENCH_DATA") else None


def fashion_mnist_search_path() -> list[Path]:
    """Where the idx files are looked for, in order: under $VITBENCH_DATA only, when it is set."""
    named = _named_root()
    first = named / "fashion-mnist" if named else Path("/usr/share/datasets/fashion-mnist")  # Debian's package
    return [first] + [root / "FashionMNIST" / "raw" for root in _torchvision_roots()]


def _torchvision_roots() -> list[Path]:
    return [_named_root()] if _named_root() else [Path("data"), Path.home() / ".cache" / "torchvision"]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), gzipped or not -> uint8 array; `ndim` checks its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    if ndim is not None and data[3] != ndim:
        raise ValueError(f"{path}: an IDX file of {data[3]} dimensions, expected {ndim}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(data[3]))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * data[3])
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({array.size} values for shape {shape})")
    return array.reshape(shape)


def fashion_mnist_folder() -> Path:
    """The first place of the search path that holds all four idx files: both splits come from one place."""
    places = fashion_mnist_search_path()
    stems = [stem for files in FASHION_FILES.values() for stem in files]
    lacking = {}
    for folder in places:
        lacking[folder] = [stem for stem in stems if not _find_idx(folder, stem)]
        if not lacking[folder]:
            return folder
    if _named_root():
        what = "; ".join(f"{folder} lacks {', '.join(m) if len(m) < len(stems) else 'all four idx files'}"
                         for folder, m in lacking.items())
        raise DataNotFoundError(f"Fashion-MNIST is not in the folder VITBENCH_DATA names ({what}): put the four idx "
                                f"files in {places[0]}, or unset VITBENCH_DATA to search the default places")
    partial = "; ".join(f"{folder} (has only {', '.join(s for s in stems if s not in missing)})"
                        for folder, missing in lacking.items() if len(missing) < len(stems))
    download_root = Path.home() / ".cache" / "torchvision"
    try:
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(download_root, train=train, download=True)
        return download_root / "FashionMNIST" / "raw"
    except Exception as err:  # noqa: BLE001 - offline machines: the clear message below says what to do
        download_error = f"{type(err).__name__}: {str(err)[:200]}"
    searched = "".join(f"  - {p}\n" for p in places)
    incomplete = f"Skipped, incomplete (both splits must come from one place): {partial}.\n" if partial else ""
    raise DataNotFoundError(
        f"Fashion-MNIST not found. Searched, in order:\n{searched}{incomplete}"
        f"and a torchvision download into {download_root} failed ({download_error}).\n"
        "Get it in one of two ways:\n"
        "  1. Debian/Ubuntu: apt-get install dataset-fashion-mnist  (files in /usr/share/datasets/fashion-mnist)\n"
        "  2. put the four idx files (train-images-idx3-ubyte[.gz], ...) in $VITBENCH_DATA/fashion-mnist/, or "
        "let torchvision download them on a machine with internet access"
    )


def _fashion_files(match: re.Match, split: str, images_only: bool) -> tuple[Path, list[Path]]:
    folder = fashion_mnist_folder()
    stems = FASHION_FILES[split][:1] if images_only else FASHION_FILES[split]
    return folder, [_find_idx(folder, stem) for stem in stems]


def _class_range(match: re.Match) -> range | None:
    return range(int(match["first"]), int(match["last"]) + 1) if match["first"] else None


def _fashion_shape(match: re.Match) -> tuple[int, int]:
    classes = _class_range(match)
    if classes is not None and len(classes) < 2:
        raise ValueError(f"dataset {match[0]!r}: class range {match['first']}-{match['last']} has "
                         f"{len(classes)} class(es); a classification task needs at least two")
    if classes is not None and len(classes) == len(FASHION_CLASSES):
        raise ValueError(f"dataset {match[0]!r} is every class: it is written 'fashion-mnist' (one name in every row)")
    return 1, len(classes) if classes else 10


def _fashion_images(match: re.Match, split: str, img_size: int) -> torch.Tensor:
    path = _fashion_files(match, split, True)[1][0]
    images = read_idx(path, ndim=3)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{path}: images of {images.shape[1]}x{images.shape[2]} pixels, expected 28x28")
    return torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, 28, 28)


def _fashion_load(match: re.Match, split: str, img_size: int) -> tuple[Split, tuple[str, ...]]:
    x = _fashion_images(match, split, img_size)
    images, labels = _fashion_files(match, split, False)[1]
    y = torch.from_numpy(read_idx(labels, ndim=1).copy()).long()
    if len(y) != len(x):
        raise ValueError(f"{images} has {len(x)} images but {labels} has {len(y)} labels: the files do not belong "
                         "together; get both again")
    if len(y) and int(y.max()) >= len(FASHION_CLASSES):
        raise ValueError(f"{labels}: label {int(y.max())} out of range (Fashion-MNIST has 10 classes)")
    classes = _class_range(match)
    if classes is None:
        return Split(x, y), FASHION_CLASSES
    keep = (y >= classes.start) & (y < classes.stop)
    return Split(x[keep], y[keep] - classes.start), tuple(FASHION_CLASSES[i] for i in classes)


# ------------------------------------------------------------------------------- CIFAR and ImageFolder


def _cifar_class(match: re.Match):
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if match[0] == "cifar10" else CIFAR100


def _cifar_root(match: re.Match) -> Path:
    cls = _cifar_class(match)
    for root in _torchvision_roots():
        if (root / cls.base_folder).is_dir():
            return root
    searched = ", ".join(str(r / cls.base_folder) for r in _torchvision_roots())
    raise DataNotFoundError(f"{match[0]} not found (searched {searched}); download it with torchvision "
                            f"(torchvision.datasets.{cls.__name__}(root, download=True)) into one of those "
                            "roots, or set VITBENCH_DATA to the root that holds it (then the only one searched)")


def _cifar_files(match: re.Match, split: str, images_only: bool) -> tuple[Path, list[Path]]:
    cls = _cifar_class(match)
    folder = _cifar_root(match) / cls.base_folder
    names = [name for name, _ in (cls.train_list if split == "train" else cls.test_list)] + [cls.meta["filename"]]
    return folder, [folder / name for name in names]


def _cifar_load(match: re.Match, split: str, img_size: int) -> tuple[Split, tuple[str, ...]]:
    data = _cifar_class(match)(str(_cifar_root(match)), train=split == "train", download=False)
    x = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
    return Split(x, torch.tensor(data.targets)), tuple(data.classes)


def _imagefolder_split(root: Path, split: str) -> Path:
    names = ("train",) if split == "train" else ("test", "val")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataNotFoundError(f"imagefolder:{root}: no {' or '.join(names)} folder of class sub-folders in {root}")


def _imagefolder_shape(match: re.Match) -> tuple[int, int]:
    root = _imagefolder_split(Path(match["path"]), "train")
    return 3, len([d for d in root.iterdir() if d.is_dir()])


def _imagefolder_images(match: re.Match) -> int:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = _imagefolder_split(Path(match["path"]), "train")
    return sum(1 for p in root.glob("*/**/*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())


def _imagefolder_files(match: re.Match, split: str, images_only: bool) -> tuple[Path, list[Path]]:
    folder = _imagefolder_split(Path(match["path"]), split)
    return Path(match["path"]), sorted(p for p in folder.rglob("*") if p.is_file())


def _imagefolder_load(match: re.Match, split: str, img_size: int) -> tuple[Split, tuple[str, ...]]:
    """Every image loaded once, resized to img_size x img_size (a folder dataset has mixed sizes)."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    resize = v2.Compose([v2.RGB(), v2.PILToTensor(), v2.Resize(img_size), v2.CenterCrop(img_size)])
    folder = ImageFolder(str(_imagefolder_split(Path(match["path"]), split)), transform=resize)
    if not len(folder):
        raise DataNotFoundError(f"imagefolder:{match['path']}: the {split} split has no images")
    x = torch.stack([folder[i][0] for i in range(len(folder))])
    return Split(x, torch.tensor(folder.targets)), tuple(folder.classes)


def _measured_stats(match: re.Match, train: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = train.x.float() / 255
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


def _fixed_stats(mean, std):
    return lambda match, train: (mean, std)


# ------------------------------------------------------------------------------------------ the table


DATASETS: tuple[DatasetKind, ...] = (
    DatasetKind("fashion-mnist[:<first>-<last>]", re.compile(r"fashion-mnist(:(?P<first>\d)-(?P<last>\d))?"),
                _fashion_shape, lambda m: 6_000 * _fashion_shape(m)[1], _fashion_load, _fashion_files,
                _fixed_stats((0.2860,), (0.3530,)), images=_fashion_images),
    DatasetKind("cifar10", re.compile("cifar10"), lambda m: (3, 10), lambda m: 50_000, _cifar_load, _cifar_files,
                _fixed_stats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))),
    DatasetKind("cifar100", re.compile("cifar100"), lambda m: (3, 100), lambda m: 50_000, _cifar_load, _cifar_files,
                _fixed_stats((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))),
    DatasetKind("imagefolder:<path>", re.compile(r"imagefolder:(?P<path>.+)"), _imagefolder_shape,
                _imagefolder_images, _imagefolder_load, _imagefolder_files, _measured_stats, by_content=False),
)
SYNTHETIC = "synthetic"
DATASET_FORMS = ", ".join([SYNTHETIC] + [d.form for d in DATASETS])


def dataset_kind(name: str) -> tuple[DatasetKind, re.Match]:
    if isinstance(name, str):
        for kind in DATASETS:
            match = kind.pattern.fullmatch(name)
            if match:
                return kind, match
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASET_FORMS}")


def normalise_dataset_name(name: str) -> str:
    """Validate a dataset name (an imagefolder must exist); a relative imagefolder path becomes absolute,
    taken from the current directory."""
    if name == SYNTHETIC:
        return name
    kind, match = dataset_kind(name)
    if "path" in kind.pattern.groupindex:
        name = f"imagefolder:{Path(match['path']).expanduser().resolve()}"
        kind, match = dataset_kind(name)
    kind.shape(match)  # an empty class range or a missing folder fails here, before any cell runs
    return name


def is_real(name: str) -> bool:
    return name != SYNTHETIC


def input_shape(dataset: str, in_chans: int, num_classes: int) -> tuple[int, int]:
    """(channels, classes) of a dataset without loading it; synthetic takes the given ones."""
    if dataset == SYNTHETIC:
        return in_chans, num_classes
    kind, match = dataset_kind(dataset)
    return kind.shape(match)


def train_images(dataset: str) -> int:
    """Images of a real dataset's training split (the published size; an ImageFolder's image files), unloaded."""
    kind, match = dataset_kind(dataset)
    return kind.train_images(match)


def is_class_range(name: str) -> bool:
    """fashion-mnist:0-4 and the like: images chosen by their labels."""
    if name == SYNTHETIC:
        return False
    kind, match = dataset_kind(name)
    return "first" in kind.pattern.groupindex and bool(match["first"])


AXIS_CHECKS = {"dataset": normalise_dataset_name}  # applied by the suite layer to the `dataset` axis
