"""The cell spec: one typed table of axes, JSON round trip, stable ids, per-value checks (the spec's own, and the
registries' as the suite layer applies them)."""

import dataclasses
import json
from pathlib import Path

import pytest

from bench.spec import AXES, Budget, CellSpec, SpecError
from bench.suite import axis_check, load_suite

SUITES = sorted((Path(__file__).parent.parent / "suites").glob("*.yaml"))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_every_shipped_cell_round_trips_through_json(path, device):
    for spec in load_suite(path, device).cells:
        again = CellSpec.from_json(spec.to_json())
        assert again == spec and again.cell_id == spec.cell_id


def test_unknown_keys_are_errors_never_dropped():
    with pytest.raises(SpecError, match=r"unknown cell spec key\(s\) \['colour'\]"):
        CellSpec.from_dict({"model": "resnet20", "colour": "red"})
    with pytest.raises(SpecError, match="unknown budget key 'epoch'"):
        CellSpec.from_dict({"budget": {"epoch": 3}})
    with pytest.raises(SpecError, match="unknown recipe key 'learning_rate'"):
        axis_check("recipe")({"learning_rate": 0.1})
    with pytest.raises(SpecError, match="unknown mae key 'ratio'"):
        axis_check("mae")({"ratio": 0.5})
    with pytest.raises(ValueError, match="unknown model spec 'resnet7'"):
        axis_check("model")("resnet7")
    with pytest.raises(SpecError, match="expected one of infer, train"):
        axis_check("task")("classify")


def test_values_are_checked_with_what_is_allowed():
    with pytest.raises(SpecError, match="batch_size: expected a positive integer, got 0"):
        CellSpec.from_dict({"batch_size": 0})
    with pytest.raises(SpecError, match="exactly one of epochs"):
        CellSpec.from_dict({"budget": {"epochs": 3, "seconds": 10}})
    with pytest.raises(SpecError, match=r"patience belongs to an epochs budget \(the converged protocol\)"):
        CellSpec.from_dict({"budget": {"seconds": 10, "patience": 2}})
    with pytest.raises(SpecError, match=r"max_images belong\(s\) to the converged protocol"):
        CellSpec.from_dict({"budget": {"epochs": 10, "max_images": 2000}})
    with pytest.raises(SpecError, match="evals belongs to a fixed or compute-equal budget"):
        CellSpec.from_dict({"budget": {"epochs": 10, "patience": 3, "evals": 4}})
    protocols = {str(b): Budget.from_dict(b).protocol for b in ({"epochs": 9, "patience": 3}, {"epochs": 9},
                                                               {"seconds": 9}, {"train_flops": 9})}
    assert list(protocols.values()) == ["converged", "fixed", "compute-equal", "compute-equal"]


def test_cell_id_depends_on_identity_fields_only():
    spec = CellSpec(model="resnet20", img_size=28)
    assert spec.cell_id == CellSpec(model="resnet20", img_size=28, study=("scaling-by-size",)).cell_id
    assert spec.cell_id != CellSpec(model="resnet20", img_size=32).cell_id
    assert spec.cell_id != spec.replace(repeats=9).cell_id
    # the id hashes only the fields that differ from their defaults: a new axis keeps existing ids
    assert spec.cell_id == CellSpec.from_dict({"model": "resnet20", "img_size": 28}).cell_id


def test_budget_protocols_and_json():
    assert Budget.from_dict({"epochs": 30, "patience": 5}).protocol == "converged"
    assert Budget.from_dict({"seconds": 90}).protocol == "compute-equal"
    assert Budget.from_dict({"train_flops": 1e15}).protocol == "compute-equal"
    spec = CellSpec(budget=Budget(seconds=90.0))
    assert json.loads(spec.to_json())["budget"] == {"seconds": 90.0}
    assert spec.column_value("budget") == '{"seconds":90.0}'


def test_relative_paths_are_taken_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "imgs" / "train" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert axis_check("dataset")("imagefolder:imgs") == f"imagefolder:{tmp_path / 'imgs'}"
    assert axis_check("init")("file:w.pt") == f"file:{tmp_path / 'w.pt'}"
    with pytest.raises(OSError, match="no train folder"):
        axis_check("dataset")("imagefolder:missing")


def test_every_axis_has_a_check_and_help():
    for name, f in AXES.items():
        assert callable(f.metadata["check"]) and f.metadata["help"], name
    assert {f.name for f in dataclasses.fields(CellSpec)} == set(AXES)


def test_grouping_keys_are_every_identity_axis_but_the_pooled_ones():
    """The report, metrics.csv and compare group by setting_columns(): a new identity axis is a new key there
    without anyone listing it (the hand-kept lists had lost nproc, compile, recipe, pool and compare_to)."""
    from bench.results import setting_columns

    identity = [name for name, f in AXES.items() if f.metadata["identity"]]
    assert setting_columns() == [name for name in identity if name not in ("seed", "init_cell")]
    assert {"compile", "nproc", "recipe", "pool", "compare_to", "engine", "calls"} <= set(setting_columns())


def test_a_row_with_an_unregistered_metric_is_refused(tmp_path):
    from bench.paths import CellContext
    from bench.results import METRICS, RowMaker, SchemaError

    maker = RowMaker(CellSpec(model="resnet9", task="infer", device="cpu"), CellContext("t", "r", tmp_path))
    assert maker.row("throughput", 1.0)["unit"] == METRICS["throughput"].unit
    with pytest.raises(SchemaError, match="unregistered metric 'throughputs'"):
        maker.row("throughputs", 1.0)
