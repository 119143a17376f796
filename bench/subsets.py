"""A training split's fixed validation set (1,000 images, the same for every cell) and the nested, stratified
training subsets of the rest (the 1k subset is inside the 5k one): index arithmetic on the split's labels."""

from __future__ import annotations

import torch

VAL_SIZE = 1000  # the fixed validation set carved from the training split (validation_set)
VALIDATION_SEED = 1_000_003  # its draw, apart from every cell's seed


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


def validation_set(labels: torch.Tensor, size: int = VAL_SIZE) -> torch.Tensor:
    """The fixed validation images of a training split: a stratified draw of `size` images with a seed of its own,
    the same for every cell (every model, training size and seed of every study) and outside every training subset.
    A split of fewer than 5 x size images gives a fifth of itself (its rows' val_size says how many)."""
    return subset_order(labels, VALIDATION_SEED)[:_validation_size(len(labels), size)].to(labels.device)


def _validation_size(n: int, size: int) -> int:
    return min(size, n // 5)


def pool_size(n: int, val_size: int = VAL_SIZE) -> int:
    """The training images a cell of a split of n images may draw: those outside its fixed validation set (a
    larger train_size gets all of them)."""
    return n - _validation_size(n, val_size)


def cell_split(labels: torch.Tensor, size: int | None, seed: int, val_size: int = VAL_SIZE) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """(training indices, validation indices) of a cell: `size` training images (all of the pool when None or
    larger than it), stratified by class and nested across sizes for one seed (the 1k subset is inside the 5k one),
    drawn from the pool outside the fixed validation set (validation_set)."""
    val = validation_set(labels, val_size)
    pool = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    pool[val] = False
    pool_idx = pool.nonzero().squeeze(1)
    order = pool_idx[subset_order(labels[pool_idx], seed).to(labels.device)]
    return (order if size is None else order[:size]), val
