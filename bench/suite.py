"""Suite files: load (yaml.safe_load), validate with messages naming file, key path and what is allowed, and
expand the grid into cells.

A suite's grid is a mapping axis -> list of values (cells are the cartesian product) or a list of such
mappings (the union of their products). `include` adds partial cells (missing axes take their defaults),
`exclude` drops every cell that matches all keys of one entry. A `cpu:` or `cuda:` block applies on that
device: its `grid` as a mapping replaces those axes in every grid, as a list replaces the whole grid; its
`include`, `exclude` and measurement keys replace the top-level ones.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .models import check_spec

INFER_TASKS = ("infer", "train")
ACCURACY_TASKS = ("train_eval", "pretrain", "finetune")
TASKS = (*INFER_TASKS, "attention", *ACCURACY_TASKS)
DTYPES = ("fp32", "fp16", "bf16")
VIT_BACKENDS = ("math", "sdpa", "triton")
ATTENTION_BACKENDS = ("triton", "math", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex")
DATASET_FORMS = "synthetic, fashion-mnist, fashion-mnist:<first>-<last> (a class range), cifar10, cifar100, " \
                "imagefolder:<path>"
_DATASET_RE = re.compile(r"^(synthetic|fashion-mnist(:\d-\d)?|cifar10|cifar100|imagefolder:.+)$")


class SuiteError(ValueError):
    """An invalid suite: the message is one line, 'file: key.path: what is wrong and what is allowed'."""


class _Invalid(ValueError):
    pass


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _Invalid(f"expected a positive integer, got {value!r}")
    return value


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Invalid(f"expected an integer >= 0, got {value!r}")
    return value


def _optional_positive_int(value: Any) -> int | None:
    return None if value is None else _positive_int(value)


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise _Invalid(f"expected one of {', '.join(allowed)}, got {value!r}")
        return value

    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {value!r}")
    return value


def _model(value: Any) -> str:
    try:
        check_spec(value)
    except ValueError as err:
        raise _Invalid(str(err)) from None
    return value


def _dataset(value: Any) -> str:
    if not isinstance(value, str) or not _DATASET_RE.match(value):
        raise _Invalid(f"expected one of {DATASET_FORMS}, got {value!r}")
    return value


def _attn_shape(value: Any) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 4:
        raise _Invalid(f"expected [batch, heads, seq_len, head_dim], got {value!r}")
    return tuple(_positive_int(v) for v in value)


def _init(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not (_DATASET_RE.match(value) or value.startswith(("timm", "file:"))):
        raise _Invalid(f"expected a pretrain dataset of this suite ({DATASET_FORMS}), 'timm' (timm's cached "
                       f"pretrained weights) or 'file:<path to a state dict>', got {value!r}")
    return value


@dataclass(frozen=True)
class Axis:
    default: Any
    check: Callable[[Any], Any]
    help: str


AXES: dict[str, Axis] = {
    "model": Axis(None, _model, "registry spec: vit:<variant>, resnet18..152[-small], resnet20/32/56, timm:<name>"),
    "task": Axis("infer", _choice(*TASKS), "what the cell measures: " + ", ".join(TASKS)),
    "batch_size": Axis(32, _positive_int, "images per step"),
    "img_size": Axis(224, _positive_int, "input height = width in pixels"),
    "dtype": Axis("fp32", _choice(*DTYPES), "fp32, or autocast to fp16 / bf16"),
    "attn_backend": Axis("sdpa", _choice(*sorted(set(VIT_BACKENDS + ATTENTION_BACKENDS))),
                         "native ViT: math|sdpa|triton; task attention: " + "|".join(ATTENTION_BACKENDS)),
    "compile": Axis(False, _bool, "wrap the model in torch.compile"),
    "dataset": Axis("synthetic", _dataset, DATASET_FORMS),
    "train_size": Axis(None, _optional_positive_int, "training images (stratified, nested); null = all"),
    "seed": Axis(0, _non_negative_int, "random seed"),
    "in_chans": Axis(3, _positive_int, "input channels for synthetic data (real datasets set their own)"),
    "num_classes": Axis(1000, _positive_int, "classes for synthetic data (real datasets set their own)"),
    "attn_shape": Axis(None, _attn_shape, "task attention: [batch, heads, seq_len, head_dim]"),
    "steps": Axis(1000, _positive_int, "accuracy tasks: optimizer-step budget"),
    "min_epochs": Axis(1, _non_negative_int, "accuracy tasks: at least this many epochs whatever the steps"),
    "init": Axis(None, _init, "task finetune: where the weights come from"),
}


SUITE_KEYS: dict[str, Axis] = {
    "name": Axis(None, lambda v: v, "suite name (results/<name>/)"),
    "description": Axis("", lambda v: v, "free text"),
    "device": Axis("auto", _choice("auto", "cpu", "cuda"), "where cells run"),
    "repeats": Axis(5, _positive_int, "timed repeats per throughput cell (median, p20, p80 over them)"),
    "warmup": Axis(2, _non_negative_int, "untimed warm-up steps"),
    "iters": Axis(5, _positive_int, "steps per timed repeat"),
    "timeout_s": Axis(600, _positive_int, "seconds a cell may run before it is recorded as a timeout"),
    "concurrency": Axis(1, _positive_int, "accuracy cells run at once on one device (throughput cells: alone)"),
}
MEASUREMENT_KEYS = ("repeats", "warmup", "iters", "timeout_s", "concurrency")
DEVICE_BLOCK_KEYS = ("grid", "include", "exclude", *MEASUREMENT_KEYS)
TOP_KEYS = (*SUITE_KEYS, "grid", "include", "exclude", "cpu", "cuda")


@dataclass(frozen=True)
class Cell:
    """One fully resolved measurement: every axis set, plus the suite's measurement settings."""

    settings: dict = field(hash=False)

    @property
    def cell_id(self) -> str:
        blob = json.dumps(self.settings, sort_keys=True, default=str).encode()
        return hashlib.sha1(blob).hexdigest()[:12]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.settings[name]
        except KeyError:
            raise AttributeError(name) from None

    def label(self) -> str:
        s = self.settings
        parts = [s["model"], s["task"], f"bs{s['batch_size']}", f"{s['img_size']}px", s["dtype"]]
        if s["task"] == "attention":
            parts = ["attention", s["attn_backend"], "x".join(map(str, s["attn_shape"])), s["dtype"]]
        elif s["task"] in ACCURACY_TASKS:
            parts += [s["dataset"], f"n={s['train_size'] or 'all'}", f"seed{s['seed']}"]
        elif s["model"].startswith("vit:"):
            parts.append(s["attn_backend"])
        return " ".join(parts)


@dataclass
class Suite:
    path: Path
    name: str
    description: str
    device: str
    repeats: int
    warmup: int
    iters: int
    timeout_s: int
    concurrency: int
    cells: list[Cell]
    text: str


def _fail(path: Path, key: str, message: str) -> SuiteError:
    return SuiteError(f"{path}: {key}: {message}")


def _check_keys(path: Path, where: str, mapping: Any, allowed: tuple[str, ...] | dict) -> None:
    if not isinstance(mapping, dict):
        raise _fail(path, where or "<top level>", f"expected a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise _fail(path, f"{prefix}{key}", f"unknown key; allowed: {', '.join(allowed)}")


def _check_value(path: Path, key: str, spec: Axis, value: Any) -> Any:
    try:
        return spec.check(value)
    except _Invalid as err:
        raise _fail(path, key, str(err)) from None


def _validated_grids(path: Path, where: str, grid: Any) -> list[dict[str, list]]:
    grids = grid if isinstance(grid, list) else [grid]
    if not grids:
        raise _fail(path, where, "empty grid: give at least one axis with at least one value")
    result = []
    for i, g in enumerate(grids):
        key = f"{where}[{i}]" if isinstance(grid, list) else where
        _check_keys(path, key, g, AXES)
        if not g:
            raise _fail(path, key, f"empty grid; axes: {', '.join(AXES)}")
        for axis, values in g.items():
            if not isinstance(values, list) or not values:
                raise _fail(path, f"{key}.{axis}", f"expected a non-empty list of values, got {values!r}")
            for j, value in enumerate(values):
                _check_value(path, f"{key}.{axis}[{j}]", AXES[axis], value)
        result.append(g)
    return result


def _partial_cells(path: Path, where: str, entries: Any) -> list[dict]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise _fail(path, where, f"expected a list of partial cells (mappings), got {entries!r}")
    for i, entry in enumerate(entries):
        _check_keys(path, f"{where}[{i}]", entry, AXES)
        for axis, value in entry.items():
            _check_value(path, f"{where}[{i}].{axis}", AXES[axis], value)
    return entries


def _resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_suite(path: str | Path, device: str | None = None) -> Suite:
    """Read, validate and expand a suite for `device` (cpu|cuda|auto; None = the suite's own setting)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SuiteError(f"{path}: cannot read suite file: {err.strerror or err}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    _check_keys(path, "", raw, TOP_KEYS)
    if not isinstance(raw.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", raw["name"]):
        raise _fail(path, "name", f"expected a name of letters, digits, '_', '.', '-', got {raw.get('name')!r}")
    if "grid" not in raw:
        raise _fail(path, "grid", "missing; a suite needs a grid of axes to expand into cells")

    settings = {key: spec.default for key, spec in SUITE_KEYS.items()}
    for key in SUITE_KEYS:
        if key in raw:
            settings[key] = _check_value(path, key, SUITE_KEYS[key], raw[key])
    device = _resolve_device(_check_value(path, "device (--device)", SUITE_KEYS["device"], device or settings["device"]))

    grids = _validated_grids(path, "grid", raw["grid"])
    include = _partial_cells(path, "include", raw.get("include"))
    exclude = _partial_cells(path, "exclude", raw.get("exclude"))
    block = raw.get(device)
    if block is not None:
        _check_keys(path, device, block, DEVICE_BLOCK_KEYS)
        for key in MEASUREMENT_KEYS:
            if key in block:
                settings[key] = _check_value(path, f"{device}.{key}", SUITE_KEYS[key], block[key])
        if isinstance(block.get("grid"), list):  # a list of grids replaces the whole grid
            grids = _validated_grids(path, f"{device}.grid", block["grid"])
        elif "grid" in block:  # a mapping replaces those axes in every grid
            overrides = _validated_grids(path, f"{device}.grid", block["grid"])[0]
            grids = [{**g, **overrides} for g in grids]
        include = _partial_cells(path, f"{device}.include", block["include"]) if "include" in block else include
        exclude = _partial_cells(path, f"{device}.exclude", block["exclude"]) if "exclude" in block else exclude

    cells = _expand(path, grids, include, exclude, settings, device)
    return Suite(path=path, name=raw["name"], description=str(raw.get("description", "")), device=device,
                 cells=cells, text=text, **{k: settings[k] for k in MEASUREMENT_KEYS})


def _expand(path, grids, include, exclude, settings, device) -> list[Cell]:
    partials: list[dict] = []
    for g in grids:
        axes = list(g)
        partials += [dict(zip(axes, combo)) for combo in itertools.product(*(g[a] for a in axes))]
    partials += include
    cells, seen = [], set()
    for partial in partials:
        if any(all(partial.get(k, AXES[k].default) == v for k, v in ex.items()) for ex in exclude):
            continue
        values = {axis: spec.default for axis, spec in AXES.items()}
        values.update(partial)
        _check_cell(path, values)
        cell = Cell({**values, "device": device, **{k: settings[k] for k in ("repeats", "warmup", "iters")}})
        if cell.cell_id not in seen:
            seen.add(cell.cell_id)
            cells.append(cell)
    if not cells:
        raise _fail(path, "grid", "no cells left after include/exclude")
    return cells


def _check_cell(path: Path, c: dict) -> None:
    """Rules that involve several axes; each names the offending cell."""
    where = "grid: cell " + json.dumps({k: c[k] for k in ("model", "task", "img_size", "dataset") if c[k] is not None})
    task = c["task"]
    if task == "attention":
        if c["attn_shape"] is None:
            raise _fail(path, where, "task attention needs attn_shape: [batch, heads, seq_len, head_dim]")
        if c["attn_backend"] not in ATTENTION_BACKENDS:
            raise _fail(path, where, f"attn_backend for task attention must be one of {', '.join(ATTENTION_BACKENDS)}")
        return
    if c["model"] is None:
        raise _fail(path, where, "every cell needs a model")
    if c["model"].startswith(("vit:", "timm-vit:")):
        if c["attn_backend"] not in VIT_BACKENDS:
            raise _fail(path, where, f"attn_backend for a native ViT must be one of {', '.join(VIT_BACKENDS)}")
        from vit_impl import config_from_variant

        try:
            config_from_variant(c["model"].split(":", 1)[1], img_size=c["img_size"])
        except ValueError as err:
            raise _fail(path, where, str(err)) from None
    if task in ACCURACY_TASKS:
        if c["dataset"] == "synthetic":
            raise _fail(path, where, f"task {task} measures accuracy and needs a real dataset ({DATASET_FORMS}); "
                        "synthetic data is for throughput and memory only")
        if task == "finetune" and c["init"] is None:
            raise _fail(path, where, "task finetune needs init: the pretrain dataset, 'timm' or 'file:<path>'")


def describe_axes() -> str:
    return "\n".join(f"  {name:<13} default {spec.default!r:<12} {spec.help}" for name, spec in AXES.items())


