"""The checksummed decoded cache, and the loaders that read through it.

The training and test splits are loaded by separate functions: training code receives `TrainData`, which has
no test images; `load_test` is called once, by the final evaluation (bench/training/loop.py: final_test).

Decoded splits are cached, uncompressed, in $VITBENCH_CACHE/data (default ~/.cache/vitbench/data) and
memory-mapped by every cell that reads them; a cache entry is keyed by a checksum of the source files (their
bytes; an ImageFolder's names, sizes and modification times), so a changed source makes a new entry, and each
entry's arrays are checked against their own checksums before use: a damaged entry is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from .readers import SYNTHETIC, Split, TrainData, dataset_kind, is_class_range


def cache_dir() -> Path:
    return Path(os.environ.get("VITBENCH_CACHE") or Path.home() / ".cache" / "vitbench") / "data"


def _sha256(paths: list[Path], by_content: bool = True, names: bool = True) -> str:
    """Of the files' bytes (read in blocks), or (by_content False) of their names, sizes and modification times;
    with `names`, of where each file sits in its dataset (not where the dataset sits on this machine) too."""
    digest = hashlib.sha256()
    for path in paths:
        if names:
            digest.update("/".join(path.parts[-2:]).encode())
        if by_content:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        else:
            stat = path.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _save_array(path: Path, array: np.ndarray) -> str:
    """np.save, atomically (a temp file renamed over the target); the file's sha256."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return _sha256([path], names=False)


def _entry_file(entry: Path, suffix: str) -> Path:
    return entry.parent / f"{entry.name}.{suffix}"


def _read_cache(entry: Path) -> tuple[Split, tuple[str, ...]]:
    """A cache entry, memory-mapped (copy on write) after its arrays matched their checksums; ValueError when
    missing or damaged."""
    meta = json.loads(_entry_file(entry, "json").read_text())
    arrays = {}
    for name, digest in meta["sha256"].items():
        path = _entry_file(entry, f"{name}.npy")
        if _sha256([path], names=False) != digest:
            raise ValueError(f"{path}: checksum mismatch")
        arrays[name] = torch.from_numpy(np.load(path, mmap_mode="c"))
    return Split(arrays["x"], arrays.get("y")), tuple(meta["classes"])


def _write_cache(entry: Path, split: Split, classes: tuple[str, ...], sources: list[Path]) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"x": split.x.numpy()} if split.y is None else {"x": split.x.numpy(), "y": split.y.numpy()}
    digests = {name: _save_array(_entry_file(entry, f"{name}.npy"), array) for name, array in arrays.items()}
    meta = json.dumps({"sha256": digests, "classes": list(classes), "sources": [str(p) for p in sources]})
    fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".meta.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(meta)
    os.replace(tmp, _entry_file(entry, "json"))  # last: an entry without its meta is not an entry


def _decoded(name: str, split: str, img_size: int, images_only: bool = False) -> tuple[Split, tuple[str, ...], str,
                                                                                       str]:
    """(split, classes, where it was found, checksum of its source files), from the cache when it holds them."""
    kind, match = dataset_kind(name)
    place, sources = kind.files(match, split, images_only)
    checksum = _sha256(sources, kind.by_content)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:80]
    entry = cache_dir() / f"{slug}-{split}{'-images' if images_only else ''}-{img_size}px-{checksum[:16]}"
    try:
        return (*_read_cache(entry), str(place), checksum)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet, or damaged: decode again
    if images_only:
        loaded = Split(kind.images(match, split, img_size), None), ()
    else:
        loaded = kind.load(match, split, img_size)
    try:
        _write_cache(entry, *loaded, sources)
    except OSError:
        pass  # a read-only or full cache folder costs speed, not correctness
    return (*loaded, str(place), checksum)


def load_train(name: str, img_size: int) -> TrainData:
    """The training split of a real dataset (CPU tensors; call .to(device))."""
    if name == SYNTHETIC:
        raise ValueError("synthetic data is for throughput and memory only, never for accuracy")
    kind, match = dataset_kind(name)
    train, classes, place, checksum = _decoded(name, "train", img_size)
    mean, std = kind.stats(match, train)
    return TrainData(name, train, classes, mean, std, kind.hflip, place, checksum)


def load_unlabeled(name: str, img_size: int, split: str = "train") -> TrainData:
    """A split's images without labels (train.y is None), for self-supervised pretraining (and its figures). A
    class range needs the labels to pick its images, so it is refused; Fashion-MNIST's label file is not even
    opened."""
    if name == SYNTHETIC:
        raise ValueError("synthetic data is for throughput and memory only, never for accuracy")
    if is_class_range(name):
        raise ValueError(f"dataset {name!r}: a class range is chosen by labels; unlabeled pretraining takes a "
                         "whole dataset")
    kind, match = dataset_kind(name)
    images, _, place, checksum = _decoded(name, split, img_size, images_only=kind.images is not None)
    images = Split(images.x, None)
    mean, std = kind.stats(match, images)
    return TrainData(name, images, (), mean, std, kind.hflip, place, checksum)


def load_test(name: str, img_size: int) -> Split:
    """The test split: read once, by the final evaluation of an accuracy cell, after training."""
    return _decoded(name, "test", img_size)[0]
