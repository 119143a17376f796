"""The cell spec: one frozen, typed dataclass whose fields are the axes of a suite's grid.

The dataclass is the table of axes: each field declares its default, its check and its help text; a new axis is
this one edit, plus its name in the declaration of each task that reads it (bench/tasks/: reads). A spec is built
once, at suite expansion, and flows unchanged to the cell process (as JSON) and into every result row (one column
per field: the *requested* values; what actually ran is in the rows' effective columns, see bench/results.py).

The bottom of the package: it imports nothing of bench. Checks are per value and know no registry: what a value
may name (a model, a dataset, a task) is checked by the registry that owns it (AXIS_CHECKS, applied by
bench/suite.py); rules across axes belong to the task. Checks may normalise and raise SpecError (one line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from vit_impl.config import ATTN_BACKENDS as VIT_BACKENDS  # our ViT's attention backends


class SpecError(ValueError):
    """A value that an axis does not accept; the message says what is allowed."""


# ------------------------------------------------------------------------------------------ value checks


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError(f"expected a positive integer, got {value!r}")
    return value


def non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"expected an integer >= 0, got {value!r}")
    return value


def positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SpecError(f"expected a positive number, got {value!r}")
    return value


def non_negative_number(value: Any) -> float:
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return positive_number(value)


def fraction(value: Any) -> float:
    """A number in [0, 1)."""
    value = non_negative_number(value)
    if value >= 1:
        raise SpecError(f"expected a number in [0, 1), got {value!r}")
    return value


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise SpecError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"expected true or false, got {value!r}")
    return value


def mapping_of(allowed: dict[str, Callable[[Any], Any]], what: str) -> Callable[[Any], dict | None]:
    """A small mapping whose keys are a fixed set; each value checked; None stays None."""

    def check(value: Any) -> dict | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise SpecError(f"expected a mapping of {what} ({', '.join(allowed)}), got {value!r}")
        out = {}
        for key, item in value.items():
            if key not in allowed:
                raise SpecError(f"unknown {what} key {key!r}; allowed: {', '.join(allowed)}")
            try:
                out[key] = allowed[key](item)
            except SpecError as err:
                raise SpecError(f"{key}: {err}") from None
        return dict(sorted(out.items()))

    return check


def text(value: Any) -> str:
    """A non-empty string; what it may name is checked by its registry (the suite layer, bench/suite.py)."""
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"expected a non-empty string, got {value!r}")
    return value


def mapping(value: Any) -> dict | None:
    """A small mapping of names to plain values, keys sorted; its registry checks the keys and values."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SpecError(f"expected a mapping of names to values, got {value!r}")
    return dict(sorted(value.items()))


def _attn_shape(value: Any) -> tuple[int, int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise SpecError(f"expected [batch, heads, seq_len, head_dim], got {value!r}")
    return tuple(positive_int(v) for v in value)


def _budget(value: Any) -> "Budget | None":
    return value if value is None or isinstance(value, Budget) else Budget.from_dict(value)


def _compare_to(value: Any) -> dict | None:
    return mapping_of({"model": text, "attn_backend": choice(*VIT_BACKENDS), "compile": boolean,
                       "dtype": choice(*DTYPES), "engine": choice(*ENGINES)}, "compare_to")(value)


def _study(value: Any) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) and STUDY_TAG.fullmatch(v) for v in values):
        raise SpecError(f"expected a study tag or a list of them, each 1 to 64 letters, digits, '.', '_' or '-', got "
                        f"{value!r}")
    return tuple(sorted(set(values)))


DTYPES = ("fp32", "fp16", "bf16")
ENGINES = ("eager", "compile", "onnxruntime")
ATTENTION_BACKENDS = ("triton", "math", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex")
DEVICES = ("cpu", "cuda")
STUDY_TAG = re.compile(r"[A-Za-z0-9._-]{1,64}")  # plain slugs: rows write a cell's tags ';'-joined


# ------------------------------------------------------------------------------------------ budget


@dataclass(frozen=True)
class Budget:
    """How long an accuracy cell trains; exactly one of epochs, seconds, train_flops.

    Three protocols (`protocol`), never mixed in one figure:
      converged      epochs with patience: train until the validation accuracy plateaus (no gain above 0.2 points
                     for `patience` evaluations), drop the learning rate tenfold `lr_drops` times at such plateaus,
                     stop at the next one; capped at `epochs` epochs and at most `max_images` images (a cell that
                     reaches the cap is not converged). Evaluations every `eval_images` training images (default:
                     one epoch, at least 2,048 images).
      fixed          epochs without patience: exactly that many epochs on a cosine schedule, `evals` evaluations
                     (pretraining that keeps its final weights)
      compute-equal  seconds or train_flops: every model gets the same training wall time on this device
                     (evaluation pauses the clock) or the same training FLOPs (forward FLOPs x 3 per image), on a
                     cosine schedule over the budget, `evals` evaluations
    Every protocol keeps the checkpoint with the best validation accuracy."""

    epochs: float | None = None
    seconds: float | None = None
    train_flops: float | None = None
    max_images: int | None = None
    patience: int | None = None
    lr_drops: int = 2
    eval_images: int | None = None
    evals: int = 20

    CHECKS = {"epochs": positive_number, "seconds": positive_number, "train_flops": positive_number,
              "max_images": optional(positive_int), "patience": optional(positive_int), "lr_drops": non_negative_int,
              "eval_images": optional(positive_int), "evals": positive_int}
    CONVERGED_ONLY = ("max_images", "lr_drops", "eval_images")

    @classmethod
    def from_dict(cls, value: Any) -> "Budget":
        checked = mapping_of(cls.CHECKS, "budget")(value)
        limits = [k for k in ("epochs", "seconds", "train_flops") if checked.get(k) is not None]
        if len(limits) != 1:
            raise SpecError(f"a budget needs exactly one of epochs (converged or fixed), seconds or train_flops "
                            f"(compute-equal), got {value!r}")
        if limits[0] != "epochs" and checked.get("patience") is not None:
            raise SpecError("patience belongs to an epochs budget (the converged protocol)")
        if checked.get("patience") is None and any(k in checked for k in cls.CONVERGED_ONLY):
            raise SpecError(f"{', '.join(k for k in cls.CONVERGED_ONLY if k in checked)} belong(s) to the converged "
                            "protocol: an epochs budget with patience")
        if checked.get("patience") is not None and "evals" in checked:
            raise SpecError("evals belongs to a fixed or compute-equal budget; the converged protocol evaluates "
                            "every eval_images training images")
        checked[limits[0]] = float(checked[limits[0]])  # {epochs: 1} and {epochs: 1.0} are one budget
        return cls(**checked)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items()
                if v != Budget.__dataclass_fields__[k].default and v != math.inf}  # a rule (rule()) has no epochs cap

    @property
    def protocol(self) -> str:
        if self.epochs is None:
            return "compute-equal"
        return "converged" if self.patience is not None else "fixed"

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def __lt__(self, other: "Budget") -> bool:  # tables and figures list budgets in a stable order
        key = lambda b: (b.protocol, b.epochs or 0.0, b.seconds or 0.0, b.train_flops or 0.0, str(b))  # noqa: E731
        return key(self) < key(other)

    def rule(self) -> "Budget":
        """The converged protocol's rule without its cap (epochs infinite, no image cap): a cell that converged
        stopped before its cap bound, and trains the same under any larger cap (the plateau schedule never reads
        the cap), so cells of one rule at different caps are one protocol. Other protocols: the budget itself."""
        if self.protocol != "converged":
            return self
        return dataclasses.replace(self, epochs=math.inf, max_images=None)

    def cap_images(self, n_train: int, batch: int) -> float:
        """The most training images this budget allows a cell of n_train images (epochs of whole batches)."""
        by_epochs = (self.epochs or math.inf) * max(1, n_train // batch) * batch
        return min(by_epochs, self.max_images or math.inf)

    def label(self) -> str:
        """For people: '60 s', '1.2e+15 FLOP', '40 epochs', 'until a validation plateau (patience 4, 2 learning-rate
        drops), at most 100 epochs and 200,000 images' (a rule without its cap: 'under a cap per cell')."""
        if self.seconds is not None:
            return f"{self.seconds:g} s"
        if self.train_flops is not None:
            return f"{self.train_flops:.3g} FLOP"
        if self.patience is None:
            return f"{self.epochs:g} epochs"
        if math.isinf(self.epochs):
            cap = "under a cap per cell (one that reached it: not converged)"
        else:
            cap = f"at most {self.epochs:,g} epochs" + (f" and {self.max_images:,} images" if self.max_images else "")
        drops = f"{self.lr_drops} learning-rate drop{'' if self.lr_drops == 1 else 's'}"
        return f"until a validation plateau (patience {self.patience}, {drops}), {cap}"


# ------------------------------------------------------------------------------------------ the spec


def axis(default: Any, check: Callable[[Any], Any], help: str, *, grid: bool = True, identity: bool = True):
    """A spec field: `grid` axes may appear in a suite's grid; `identity` fields make the cell id."""
    return field(default=default, metadata={"check": check, "help": help, "grid": grid, "identity": identity})


@dataclass(frozen=True)
class CellSpec:
    """One fully resolved cell: every axis set, plus the suite's measurement settings."""

    model: str | None = axis(None, optional(text), "vit:<variant> | resnet18..152[-small] | resnet20/32/56 | "
                                           "resnet9[-w<width>] | timm:<name> | timm-vit:<variant>")
    task: str = axis("infer", text, "what the cell measures (python -m bench list: tasks)")
    batch_size: int = axis(32, positive_int, "images per step")
    img_size: int = axis(224, positive_int, "input height = width in pixels")
    dtype: str = axis("fp32", choice(*DTYPES), "fp32, or autocast to fp16 / bf16")
    attn_backend: str = axis("sdpa", choice(*sorted(set(VIT_BACKENDS + ATTENTION_BACKENDS)), "none"),
                             "native ViT: math|sdpa|triton; task attention: " + "|".join(ATTENTION_BACKENDS)
                             + "; ignored (none) for models without a choice")
    compile: bool = axis(False, boolean, "training: wrap the model in torch.compile")
    engine: str = axis("eager", choice(*ENGINES), "infer / latency: serve the model with eager PyTorch, torch.compile "
                                                  "or ONNX Runtime (pip install 'vitbench[onnx]')")
    dataset: str = axis("synthetic", text, "synthetic (throughput/memory only), fashion-mnist[:<a>-<b>], "
                                               "cifar10, cifar100, imagefolder:<path>")
    train_size: int | None = axis(None, optional(positive_int), "training images (stratified, nested); null = all")
    seed: int = axis(0, non_negative_int, "random seed")
    in_chans: int = axis(3, positive_int, "input channels of synthetic data (real datasets set their own)")
    num_classes: int = axis(1000, positive_int, "classes of synthetic data (real datasets set their own)")
    attn_shape: tuple[int, int, int, int] | None = axis(None, optional(_attn_shape),
                                                        "task attention: [batch, heads, seq_len, head_dim]")
    budget: Budget | None = axis(None, _budget, "accuracy tasks: {epochs: cap, patience, lr_drops, max_images, "
                                                "eval_images} (converged) | {epochs|seconds|train_flops: N, evals}")
    recipe: dict | None = axis(None, mapping, "accuracy tasks: overrides of the family's recipe, e.g. {lr: 0.002}")
    init: str | None = axis(None, optional(text), "finetune / linear_probe: a pretrain dataset of this run "
                                         "(fashion-mnist:0-4), mae:<dataset>, timm, or file:<state dict>")
    mae: dict | None = axis(None, mapping, "pretrain_mae: {mask_ratio, decoder_depth, decoder_dim, decoder_heads, "
                                        "norm_pix_loss}")
    pool: str = axis("cls", choice("cls", "mean"), "linear_probe: the class token's features or the patch tokens' mean")
    robustness: dict | None = axis(None, mapping, "robustness: {corruptions: [names], severities: [1..5]} "
                                                  "(bench/corruptions.py; default: every corruption, severities 1-5)")
    nproc: int = axis(1, positive_int, "accuracy tasks: data-parallel processes in the cell (torch.distributed; "
                                       "batch_size is per process)")
    compare_to: dict | None = axis(None, _compare_to, "infer/train/latency: time against another {model, attn_backend, "
                                                      "compile, dtype, engine}, alternately in one process: the ratio")
    calls: int = axis(200, positive_int, "latency: timed calls, each timed alone (a tenth as many warm-up calls "
                                         "before them)")
    # Set by the suite, not the grid:
    init_cell: str | None = axis(None, optional(text), "the cell whose checkpoint a finetune, linear_probe, rollout "
                                                       "or robustness cell reads (resolved by the suite)", grid=False)
    keep_checkpoint: bool = axis(False, boolean, "a cell of this run reads this cell's checkpoint: keep its best "
                                                 "weights (set by the suite)", grid=False, identity=False)
    study: tuple[str, ...] = axis((), _study, "tags of the grid entries this cell came from (report studies)",
                                  grid=False, identity=False)
    device: str = axis("cpu", choice(*DEVICES), "where the cell runs", grid=False)
    repeats: int = axis(5, positive_int, "timed repeats (median, p20, p80 over them)", grid=False)
    warmup: int = axis(2, non_negative_int, "untimed warm-up steps", grid=False)
    iters: int = axis(5, positive_int, "steps per timed repeat", grid=False)

    # ---------------------------------------------------------------------------------------- identity

    @property
    def cell_id(self) -> str:
        """12 hex digits of the sha1 of the identity fields that differ from their defaults (so a new axis
        with a default keeps every existing id)."""
        data = self.to_dict()
        ident = {f.name: data[f.name] for f in dataclasses.fields(self)
                 if f.metadata["identity"] and getattr(self, f.name) != f.default}
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]

    # ---------------------------------------------------------------------------------------- JSON

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Budget):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "CellSpec":
        """Validate and build; an unknown key is an error, never dropped."""
        if not isinstance(data, dict):
            raise SpecError(f"a cell spec is a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(AXES))
        if unknown:
            raise SpecError(f"unknown cell spec key(s) {unknown}; allowed: {', '.join(AXES)}")
        values = {}
        for name, value in data.items():
            try:
                values[name] = AXES[name].metadata["check"](value)
            except SpecError as err:
                raise SpecError(f"{name}: {err}") from None
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CellSpec":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "CellSpec":
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------------------------------- display

    def column_value(self, name: str) -> Any:
        """The value as written in a results row: scalars as is, shapes as BxHxNxD, mappings as JSON."""
        value = getattr(self, name)
        if name == "attn_shape" and value is not None:
            return "x".join(map(str, value))
        if name == "study":
            return ";".join(value)
        if isinstance(value, Budget):
            return str(value)
        if isinstance(value, dict):
            return json.dumps(value, sort_keys=True, separators=(",", ":"))
        return value

    def label(self) -> str:
        if self.task == "attention":
            return " ".join(["attention", self.attn_backend, self.column_value("attn_shape"), self.dtype])
        parts = [str(self.model), self.task, f"bs{self.batch_size}", f"{self.img_size}px", self.dtype]
        if self.dataset != "synthetic":
            parts += [self.dataset, f"n={self.train_size or 'all'}", f"seed{self.seed}"]
        if self.budget is not None:
            parts.append(str(self.budget))
        if self.attn_backend not in ("sdpa", "none"):
            parts.append(self.attn_backend)
        if self.engine != "eager":
            parts.append(self.engine)
        if self.compare_to:
            parts.append("vs " + " ".join(str(v) for v in self.compare_to.values()))
        if self.init:
            parts.append(f"init={self.init}")
        return " ".join(parts)


AXES: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(CellSpec)}
GRID_AXES: tuple[str, ...] = tuple(name for name, f in AXES.items() if f.metadata["grid"])


def describe_axes() -> str:
    return "\n".join(f"  {name:<13} default {f.default!r:<12} {f.metadata['help']}"
                     for name, f in AXES.items() if f.metadata["grid"])
