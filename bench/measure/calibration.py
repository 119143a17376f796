"""Calibration of a classifier's confidence: the expected calibration error (Guo et al. 2017, "On Calibration of
Modern Neural Networks"), with equal-width confidence bins."""

from __future__ import annotations

import torch

ECE_BINS = 15  # Guo et al.'s choice


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """sum over bins of |accuracy - mean confidence| x the bin's share of images, the confidence being the top
    class's probability; probs (N, K) rows summing to 1, labels (N,). 0 for a predictor whose confidence is its
    accuracy in every bin."""
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"expected probs (N, K) and labels (N,) with N > 0, got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")
    confidence, predicted = probs.float().max(dim=1)  # (N,), (N,)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1, device=probs.device)
    which = torch.bucketize(confidence, edges[1:-1])  # (N,) bin index; bin b holds (edges[b], edges[b+1]]
    count = torch.bincount(which, minlength=bins).float()
    gap = torch.bincount(which, weights=correct - confidence, minlength=bins).abs()  # |sum (correct - confidence)|
    return (gap.sum() / count.sum()).item()
