"""Suite files: load (UTF-8 text under a size limit, no duplicate keys, bounded alias expansion), validate with
one-line messages naming the file, the key and what is allowed, and expand the grid into CellSpecs.

A suite's grid is a mapping axis -> list of values (cells are the cartesian product) or a list of such mappings
(the union of their products); a grid entry may carry `study: <tag>` (or a list of tags), which tags its cells
for the report without being an axis. `include` adds partial cells (missing axes take their defaults),
`exclude` drops every cell that matches all keys of one entry. A `cpu:` or `cuda:` block applies on that device:
its `grid` as a mapping replaces those axes in every grid, as a list replaces the whole grid; its `include`,
`exclude` and measurement keys replace the top-level ones. Relative paths in values (`imagefolder:`, `file:`)
are taken from the directory `bench` is started in.

Every value is checked twice: by its axis's own check (bench/spec.py) and by the registry that owns what it
names (bench/tasks: AXIS_CHECKS). A cell that reads a checkpoint (fine-tuning, probing, rollout) is linked here to
the one cell of the suite that writes it (spec.init_cell); none, or several, is an error.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .spec import AXES, GRID_AXES, CellSpec, SpecError, choice, non_negative_int, positive_int
from .tasks import AXIS_CHECKS, TASKS

MAX_SUITE_BYTES = 256 * 1024
MAX_YAML_NODES = 100_000  # values after alias expansion: a 400-byte file must not become gigabytes
DEFAULT_MAX_CELLS = 2_000
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SuiteError(ValueError):
    """An invalid suite: the message is one line, 'file: key.path: what is wrong and what is allowed'."""


SETTINGS = {  # suite-level settings: check, default, help
    "repeats": (positive_int, 5, "timed repeats per throughput cell (median, p20, p80 over them)"),
    "warmup": (non_negative_int, 2, "untimed warm-up steps"),
    "iters": (positive_int, 5, "steps per timed repeat"),
    "timeout_s": (positive_int, 600, "seconds a cell may run before it is recorded as a timeout"),
    "concurrency": (positive_int, 1, "accuracy cells run at once on one device (throughput cells: alone)"),
}
DEVICE_BLOCK_KEYS = ("grid", "include", "exclude", *SETTINGS)
TOP_KEYS = ("name", "description", "device", *DEVICE_BLOCK_KEYS, "cpu", "cuda")
GRID_ENTRY_KEYS = (*GRID_AXES, "study")


@dataclass(frozen=True)
class Capped:
    """A cell whose train_size asks for more images than its task draws from its dataset: it trains on all `pool`
    of them, as do the suite's cells `same_as` (the same setting with another train_size, or null)."""

    spec: CellSpec
    pool: int
    same_as: tuple[str, ...]

    def __str__(self) -> str:
        same = f"; the same images as cell(s) {', '.join(self.same_as)}" if self.same_as else ""
        return (f"cell {self.spec.cell_id} ({self.spec.label()}): train_size {self.spec.train_size:,} is more than "
                f"the {self.pool:,} images a {self.spec.task} cell draws from {self.spec.dataset}; it trains on "
                f"{self.pool:,}{same}")


@dataclass
class Suite:
    path: Path
    name: str
    description: str
    device: str
    timeout_s: int
    concurrency: int
    cells: list[CellSpec]
    text: str
    capped: list[Capped]  # said at validation (bench run, --dry-run too); rows keep train_size and train_size_used


def _fail(path: Path, key: str, message: str) -> SuiteError:
    message = " ".join(str(message).split())
    if len(message) > 400:
        message = message[:400] + " ..."
    return SuiteError(f"{path}: {key}: {message}")


# ------------------------------------------------------------------------------------------ loading


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys (which would otherwise silently win). Merge keys (<<: *base)
    still work: a key written out overrides the merged one, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "unhashable key", key_node.start_mark) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (line "
                                                        f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _count_nodes(value: Any, budget: int) -> int:
    """Values in `value` as if aliases were copied, stopping once over `budget` (so the walk stays cheap)."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > budget:
            return count
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def _read(path: Path) -> tuple[str, Any]:
    try:
        if path.stat().st_size > MAX_SUITE_BYTES:
            raise SuiteError(f"{path}: <file>: {path.stat().st_size} bytes; a suite file may have at most "
                             f"{MAX_SUITE_BYTES} bytes")
        data = path.read_bytes()
    except OSError as err:
        raise SuiteError(f"{path}: <file>: cannot read suite file: {err.strerror or err}") from None
    if b"\0" in data:
        raise SuiteError(f"{path}: <file>: binary data (NUL bytes); a suite is a UTF-8 YAML text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SuiteError(f"{path}: <file>: not UTF-8 text (byte {err.start}); a suite is a UTF-8 YAML text file") \
            from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except RecursionError:
        raise SuiteError(f"{path}: <file>: nested too deeply; a suite is a few levels of mappings and lists") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SuiteError(f"{path}: <file>: invalid YAML{line}: {problem}") from None
    if _count_nodes(raw, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise SuiteError(f"{path}: <file>: expands to more than {MAX_YAML_NODES} values (YAML aliases?); "
                         "write the suite out plainly")
    return text, raw


# ------------------------------------------------------------------------------------------ validation


def _check_keys(path: Path, where: str, mapping: Any, allowed: tuple[str, ...]) -> dict:
    if not isinstance(mapping, dict):
        raise _fail(path, where or "<top level>", f"expected a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise _fail(path, f"{prefix}{key}", f"unknown key; allowed: {', '.join(map(str, allowed))}")
    return mapping


def _checked(path: Path, key: str, check, value: Any) -> Any:
    try:
        return check(value)
    except (ValueError, OSError) as err:  # SpecError, or a registry's own error (an unknown model, a missing folder)
        raise _fail(path, key, str(err)) from None


def axis_check(axis: str):
    """The axis's own check, then its registry's, if any: the whole check of a value a suite gives an axis."""
    own, registry = AXES[axis].metadata["check"], AXIS_CHECKS.get(axis)
    if registry is None:
        return own

    def check(value: Any) -> Any:
        value = own(value)
        return None if value is None else registry(value)

    return check


def _grid_entries(path: Path, where: str, grid: Any) -> list[tuple[dict[str, list], tuple[str, ...]]]:
    """Validated grid entries: (axis -> checked values, study tags)."""
    entries = grid if isinstance(grid, list) else [grid]
    if not entries:
        raise _fail(path, where, "empty grid: give at least one axis with at least one value")
    result = []
    for i, entry in enumerate(entries):
        key = f"{where}[{i}]" if isinstance(grid, list) else where
        _check_keys(path, key, entry, GRID_ENTRY_KEYS)
        study = _checked(path, f"{key}.study", AXES["study"].metadata["check"], entry.get("study", []))
        axes = {axis: values for axis, values in entry.items() if axis != "study"}
        if not axes:
            raise _fail(path, key, f"empty grid entry; axes: {', '.join(GRID_AXES)}")
        checked = {}
        for axis, values in axes.items():
            if not isinstance(values, list) or not values:
                raise _fail(path, f"{key}.{axis}", f"expected a non-empty list of values, got {values!r}")
            check = axis_check(axis)
            checked[axis] = [_checked(path, f"{key}.{axis}[{j}]", check, v) for j, v in enumerate(values)]
        result.append((checked, study))
    return result


def _partial_cells(path: Path, where: str, entries: Any) -> list[dict]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise _fail(path, where, f"expected a list of partial cells (mappings), got {entries!r}")
    out = []
    for i, entry in enumerate(entries):
        _check_keys(path, f"{where}[{i}]", entry, GRID_ENTRY_KEYS)
        out.append({axis: _checked(path, f"{where}[{i}].{axis}", axis_check(axis), value)
                    for axis, value in entry.items()})
    return out


def _resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_suite(path: str | Path, device: str | None = None, max_cells: int = DEFAULT_MAX_CELLS) -> Suite:
    """Read, validate and expand a suite for `device` (cpu|cuda|auto; None = the suite's own setting)."""
    path = Path(path)
    text, raw = _read(path)
    _check_keys(path, "", raw, TOP_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = name if not isinstance(name, str) or len(name) <= 40 else name[:40] + "..."
        raise _fail(path, "name", f"expected a plain name of 1 to 64 letters, digits, '_' or '-' (it names "
                                  f"results/<name>/), got {shown!r}")
    if "grid" not in raw:
        raise _fail(path, "grid", "missing; a suite needs a grid of axes to expand into cells")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _fail(path, "description", f"expected text, got {type(description).__name__}")
    requested = device or raw.get("device", "auto")
    device = _resolve_device(_checked(path, "device (--device)", choice("auto", "cpu", "cuda"), requested))

    settings = {key: _checked(path, key, check, raw[key]) if key in raw else default
                for key, (check, default, _) in SETTINGS.items()}
    grids = _grid_entries(path, "grid", raw["grid"])
    include = _partial_cells(path, "include", raw.get("include"))
    exclude = _partial_cells(path, "exclude", raw.get("exclude"))
    block = raw.get(device)
    if block is not None:
        _check_keys(path, device, block, DEVICE_BLOCK_KEYS)
        for key, (check, _, _) in SETTINGS.items():
            if key in block:
                settings[key] = _checked(path, f"{device}.{key}", check, block[key])
        if isinstance(block.get("grid"), list):  # a list of grids replaces the whole grid
            grids = _grid_entries(path, f"{device}.grid", block["grid"])
        elif "grid" in block:  # a mapping replaces those axes in every grid
            overrides = _grid_entries(path, f"{device}.grid", block["grid"])[0][0]
            grids = [({**axes, **overrides}, study) for axes, study in grids]
        include = _partial_cells(path, f"{device}.include", block["include"]) if "include" in block else include
        exclude = _partial_cells(path, f"{device}.exclude", block["exclude"]) if "exclude" in block else exclude

    n_cells = sum(math.prod(len(v) for v in axes.values()) for axes, _ in grids) + len(include)
    if n_cells > max_cells:
        raise _fail(path, "grid", f"expands to {n_cells} cells, more than the limit of {max_cells}; pass "
                                  f"--max-cells {n_cells} to run it anyway")
    fixed = {"device": device, **{k: settings[k] for k in ("repeats", "warmup", "iters")}}
    cells = _expand(path, grids, include, exclude, fixed)
    return Suite(path=path, name=name, description=description, device=device, timeout_s=settings["timeout_s"],
                 concurrency=settings["concurrency"], cells=cells, text=text, capped=_capped(cells))


def _capped(cells: list[CellSpec]) -> list[Capped]:
    """The cells whose train_size is more than their task can draw from their dataset, each with the cells that
    train on the same images (every image the setting may draw)."""
    pools: dict[tuple, int | None] = {}  # per task, dataset and recipe: an ImageFolder is counted once
    whole: dict[str, list[str]] = {}  # a setting less its train_size -> its cells that get every image
    found = []
    for spec in cells:
        key = (spec.task, spec.dataset, spec.column_value("recipe"))
        if key not in pools:
            pools[key] = TASKS[spec.task].train_pool(spec)
        pool = pools[key]
        if pool is None or (spec.train_size is not None and spec.train_size < pool):
            continue  # no training subset, or a proper one
        whole.setdefault(spec.replace(train_size=None).cell_id, []).append(spec.cell_id)
        if spec.train_size is not None and spec.train_size > pool:
            found.append((spec, pool))
    return [Capped(spec, pool, tuple(i for i in whole[spec.replace(train_size=None).cell_id] if i != spec.cell_id))
            for spec, pool in found]


def _shown(spec: CellSpec) -> str:
    defaults = {name: f.default for name, f in AXES.items()}
    return json.dumps({k: spec.column_value(k) for k in ("model", "task", "img_size", "dataset", "train_size", "seed")
                       if getattr(spec, k) != defaults[k]})


def _expand(path: Path, grids, include, exclude, fixed: dict) -> list[CellSpec]:
    partials: list[dict] = []
    for axes, study in grids:
        names = list(axes)
        partials += [{**dict(zip(names, combo)), "study": study}
                     for combo in itertools.product(*(axes[a] for a in names))]
    partials += include
    defaults = {name: f.default for name, f in AXES.items()}
    cells: dict[str, CellSpec] = {}
    for partial in partials:
        if any(all(partial.get(k, defaults[k]) == v for k, v in ex.items()) for ex in exclude):
            continue
        spec = CellSpec(**{**partial, **fixed})
        try:
            spec = TASKS[spec.task].check(spec)
        except SpecError as err:
            raise _fail(path, f"grid: cell {_shown(spec)}", str(err)) from None
        known = cells.get(spec.cell_id)
        if known is not None:  # the same cell from two entries: one cell with both entries' study tags
            spec = dataclasses.replace(known, study=tuple(sorted(set(known.study) | set(spec.study))))
        cells[spec.cell_id] = spec
    if not cells:
        raise _fail(path, "grid", "no cells left after include/exclude")
    linked = [_link_checkpoint(path, spec, cells.values()) for spec in cells.values()]
    read = {spec.init_cell for spec in linked}
    return [spec.replace(keep_checkpoint=True) if spec.cell_id in read else spec for spec in linked]


def _link_checkpoint(path: Path, spec: CellSpec, cells) -> CellSpec:
    """A cell that reads a checkpoint, linked to the one cell that writes it (CheckpointRef: one of its tasks, on
    its dataset, with the reader's values of its `same` axes)."""
    ref = TASKS[spec.task].reads_checkpoint(spec)
    if ref is None:
        return spec
    writers = [c for c in cells if c.task in ref.tasks and c.dataset == ref.dataset
               and all(getattr(c, name) == getattr(spec, name) for name in ref.same if name != "dataset")]
    same = ", ".join(f"{name} {spec.column_value(name)}" for name in ref.same
                     if name == "seed" or name != "dataset" and getattr(spec, name) != AXES[name].default)
    what = f"a {' or '.join(ref.tasks)} cell on {ref.dataset} with {same}"
    if not writers:
        raise _fail(path, f"grid: cell {_shown(spec)}", f"reads the checkpoint of {what}, and the suite has none; "
                                                        "add that cell to the grid")
    if len(writers) > 1:
        differ = sorted(name for name in AXES if AXES[name].metadata["identity"]
                        and len({w.column_value(name) for w in writers}) > 1)
        raise _fail(path, f"grid: cell {_shown(spec)}", f"reads the checkpoint of {what}, and the suite has "
                                                        f"{len(writers)} of them (they differ in "
                                                        f"{', '.join(differ)}): keep one")
    return spec.replace(init_cell=writers[0].cell_id)


def describe_settings() -> str:
    return "\n".join(f"  {key:<13} default {default!r:<12} {help}" for key, (_, default, help) in SETTINGS.items())
