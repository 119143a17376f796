"""Where training stands in its budget (the clock), the schedules that set the learning rate and decide when to
evaluate and when to stop (Cosine for fixed and compute-equal budgets, Plateau for the converged protocol), and
the loop over batches that every training shares (run_budget)."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..measure.phases import phase
from ..results import RowMaker
from ..spec import Budget

PLATEAU_GAIN = 0.002  # a gain of validation accuracy above 0.2 points (2 images of 1,000) is progress
MIN_EVAL_IMAGES = 2048  # the converged protocol evaluates at most every 2,048 training images


class BudgetClock:
    """Where training stands in its budget, from 0 to 1 (for the converged protocol: the share of its cap), and
    what it has spent."""

    def __init__(self, budget: Budget, n_train: int, batch: int, train_flops_per_image: float):
        self.budget = budget
        self.n_train = n_train
        self.batch = batch  # the global batch of one optimizer step
        self.train_flops_per_image = train_flops_per_image  # forward + backward (+ frozen parts' forward)
        self.steps = 0
        self.train_seconds = 0.0
        if budget.epochs is not None:
            total = math.ceil(budget.epochs * max(1, n_train // batch))
            if budget.max_images is not None:
                total = min(total, max(1, budget.max_images // batch))
            self.total_steps = total

    @property
    def images_seen(self) -> int:
        return self.steps * self.batch

    @property
    def epochs(self) -> float:
        return self.images_seen / self.n_train

    @property
    def train_flops(self) -> float:
        return self.images_seen * self.train_flops_per_image

    @property
    def fraction(self) -> float:
        if self.budget.epochs is not None:
            return self.steps / self.total_steps
        if self.budget.seconds is not None:
            return self.train_seconds / self.budget.seconds
        return self.train_flops / self.budget.train_flops

    @property
    def done(self) -> bool:
        return self.fraction >= 1.0

    def columns(self) -> dict:
        """The rows' effective columns about the budget."""
        return {"protocol": self.budget.protocol, "steps": self.steps, "epochs": round(self.epochs, 3)}

    def rows(self, maker: RowMaker) -> list[dict]:
        """What training cost: train_time, images_seen, train_flops, epoch_time."""
        return [maker.row("train_time", self.train_seconds, n_repeats=1),
                maker.row("images_seen", self.images_seen, n_repeats=1),
                maker.row("train_flops", self.train_flops, n_repeats=1),
                maker.row("epoch_time", self.train_seconds / max(1e-9, self.epochs), n_repeats=1)]


def lr_factor(progress: float, warmup_frac: float) -> float:
    """Linear warm-up over the first warmup_frac of the budget, then cosine decay to 0."""
    if progress < warmup_frac:
        return max(progress / warmup_frac, 1e-3)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup_frac) / max(1e-9, 1 - warmup_frac))))


class Cosine:
    """Fixed and compute-equal budgets: warm-up and cosine decay over the budget's progress, `evals` evaluations
    spread over it, no stop before the budget is spent."""

    def __init__(self, clock: BudgetClock, warmup_frac: float):
        self.clock, self.warmup_frac = clock, warmup_frac
        self.next_eval = 1

    def lr_factor(self) -> float:
        return lr_factor(self.clock.fraction, self.warmup_frac)

    def due(self) -> bool:
        evals = self.clock.budget.evals
        if self.clock.done or self.clock.fraction >= self.next_eval / evals:
            self.next_eval = math.floor(self.clock.fraction * evals) + 1
            return True
        return False

    def update(self, val_accuracy: float | None) -> bool:
        return False

    @property
    def converged(self) -> bool:
        return False


class Plateau:
    """The converged protocol: evaluate every `eval_images` training images (default one epoch, at least
    MIN_EVAL_IMAGES); a linear warm-up over the first interval, then the full rate until `patience` evaluations
    bring no validation-accuracy gain above PLATEAU_GAIN over the best so far; then a tenth of the rate, `lr_drops`
    times; the next plateau ends training, converged. Reaching the cap (the clock's total steps) ends it
    unconverged."""

    def __init__(self, clock: BudgetClock):
        budget = clock.budget
        images = budget.eval_images or max(clock.n_train, MIN_EVAL_IMAGES)
        self.clock, self.every = clock, max(1, round(images / clock.batch))
        self.patience, self.drops_left = budget.patience, budget.lr_drops
        self.scale, self.best, self.since = 1.0, -math.inf, 0
        self.converged = False

    def lr_factor(self) -> float:
        warmup = min(1.0, self.clock.steps / self.every)
        return self.scale * max(warmup, 1e-3)

    def due(self) -> bool:
        return self.clock.steps % self.every == 0 or self.clock.done

    def update(self, val_accuracy: float | None) -> bool:
        if val_accuracy > self.best + PLATEAU_GAIN:
            self.best, self.since = val_accuracy, 0
            return False
        self.best = max(self.best, val_accuracy)
        self.since += 1
        if self.since < self.patience:
            return False
        if self.drops_left == 0:
            self.converged = True
            return True
        self.drops_left -= 1
        self.scale /= 10
        self.since = 0
        return False


def schedule_for(clock: BudgetClock, warmup_frac: float) -> Cosine | Plateau:
    return Plateau(clock) if clock.budget.protocol == "converged" else Cosine(clock, warmup_frac)


def run_budget(clock: BudgetClock, schedule: Cosine | Plateau, optimizer: torch.optim.Optimizer, lr: float,
               gen: torch.Generator, device: str, step: Callable[[torch.Tensor], None],
               evaluate: Callable[[], float | None]) -> bool:
    """The training loop of every accuracy task: shuffled batches of indices into the n_train images until the
    budget is spent or the schedule stops it, the learning rate from the schedule, the training clock stopped
    during evaluation (when the schedule says it is due; `evaluate` returns the validation accuracy, or None where
    there is none). The first step, which pays one-time costs (allocations, kernel selection, compilation), counts
    as a step but runs before the clock starts. Returns whether the schedule stopped it before the budget."""
    phase("train")
    while True:
        order = torch.randperm(clock.n_train, device=device, generator=gen)
        for start in range(0, clock.n_train - clock.batch + 1, clock.batch):
            started = time.perf_counter()
            factor = schedule.lr_factor()
            for group in optimizer.param_groups:
                group["lr"] = lr * factor * group["lr_scale"]
            step(order[start:start + clock.batch])
            clock.steps += 1
            if device == "cuda" and (clock.budget.seconds is not None or clock.steps == 1):
                torch.cuda.synchronize()  # the clock must see the GPU's work, not only its launch
            if clock.steps > 1:
                clock.train_seconds += time.perf_counter() - started
            if schedule.due():
                phase("eval")
                stop = schedule.update(evaluate())
                phase("train")
                if stop:
                    return True
            if clock.done:
                return False
