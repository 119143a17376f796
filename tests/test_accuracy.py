"""Data (search order, missing data, subsets, validation split, augmentation) and the accuracy tasks (budgets,
validation-based selection, the test split read once, train FLOPs, fine-tuning)."""

import gzip
import json
import struct
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from bench.data import readers
from bench import training
from bench.cell import run_cell
from bench.data import DataNotFoundError, DeviceAugment, load_test, load_train
from bench.models import build_model
from bench.paths import CellContext
from bench.spec import Budget, CellSpec
from bench.subsets import VAL_SIZE, cell_split, validation_set
from bench.tasks import TASKS, supervised
from tests.conftest import ROOT, fake_fashion, needs_fmnist


# ------------------------------------------------------------------------------------------ data


def test_vitbench_data_is_searched_alone(tmp_path, monkeypatch):
    fake_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("VITBENCH_DATA", str(tmp_path))
    assert readers.fashion_mnist_search_path() == [tmp_path / "fashion-mnist", tmp_path / "FashionMNIST" / "raw"]
    data = load_train("fashion-mnist", 28)
    assert data.train.x.shape == (40, 1, 28, 28) and load_test("fashion-mnist", 28).x.shape == (20, 1, 28, 28)
    assert int(data.train.x.max()) == 7 and data.num_classes == 10  # the fake files, not the real ones
    assert not hasattr(data, "test") and not hasattr(data, "test_x")  # training data never holds the test split


def test_class_range_relabels(tmp_path, monkeypatch):
    fake_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("VITBENCH_DATA", str(tmp_path))
    data = load_train("fashion-mnist:5-9", 28)
    assert data.classes == ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert sorted(data.train.y.unique().tolist()) == [0, 1, 2, 3, 4] and len(data.train.y) == 20


def test_missing_data_names_places_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "fashion_mnist_search_path", lambda: [tmp_path / "a", tmp_path / "b"])
    monkeypatch.setattr(readers.Path, "home", lambda: tmp_path / "home")

    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.FashionMNIST", offline)
    with pytest.raises(DataNotFoundError) as err:
        load_train("fashion-mnist", 28)
    message = str(err.value)
    for expected in (str(tmp_path / "a"), str(tmp_path / "b"), "apt-get install dataset-fashion-mnist",
                     "$VITBENCH_DATA/fashion-mnist", "network unreachable"):
        assert expected in message


def test_truncated_idx_is_rejected(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 100) + b"\x00" * 10)
    with pytest.raises(ValueError, match="truncated"):
        readers.read_idx(path)


def test_synthetic_is_not_a_dataset_for_accuracy():
    with pytest.raises(ValueError, match="throughput and memory only"):
        load_train("synthetic", 28)


def _shuffled_labels(n=60_000, seed=5):
    labels = torch.arange(n) % 10
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def test_subsets_are_stratified_nested_and_outside_the_fixed_validation_set():
    labels = _shuffled_labels()
    (small, val), (large, val_again) = cell_split(labels, 1000, seed=3), cell_split(labels, 5000, seed=3)
    assert torch.equal(val, val_again) and torch.equal(val, validation_set(labels))  # one set for every cell
    assert set(small.tolist()) <= set(large.tolist())
    for subset, size in ((small, 1000), (large, 5000), (val, VAL_SIZE)):
        counts = torch.bincount(labels[subset], minlength=10)
        assert len(set(subset.tolist())) == size and (counts - size // 10).abs().max() <= 1
    everything, _ = cell_split(labels, None, seed=0)
    assert len(everything) == 60_000 - VAL_SIZE and set(everything.tolist()).isdisjoint(val.tolist())
    assert set(cell_split(labels, 1000, seed=4)[0].tolist()) != set(small.tolist())


@pytest.mark.parametrize("size", [10, 125, 1000])
def test_the_validation_set_is_disjoint_from_every_training_subset(size):
    labels = _shuffled_labels()
    train, val = cell_split(labels, size, seed=size)
    assert len(train) == size and set(train.tolist()).isdisjoint(val.tolist())
    assert (torch.bincount(labels[train], minlength=10) - size // 10).abs().max() <= 1


def test_a_small_split_gives_a_fifth_of_itself_to_validation():
    labels = torch.arange(2000) % 10
    assert len(validation_set(labels)) == 400


def test_augmentation_shapes_and_normalisation():
    from bench.data import Split, TrainData

    data = TrainData("t", Split(torch.full((4, 1, 28, 28), 255, dtype=torch.uint8), torch.zeros(4).long()), ("a",),
                     (0.5,), (0.5,), hflip=True)
    aug = DeviceAugment(data, img_size=32)
    out = aug.train(data.train.x, torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 32, 32) and out.dtype == torch.float32
    assert out.max().item() == pytest.approx(1.0, abs=1e-3) and out.min().item() == pytest.approx(-1.0, abs=1e-3)
    torch.testing.assert_close(aug.normalise(torch.zeros((2, 1, 28, 28), dtype=torch.uint8)),
                               torch.full((2, 1, 32, 32), -1.0))


def test_imagefolder_loads_and_resizes(tmp_path):
    from PIL import Image

    for split, per_class in (("train", 3), ("val", 2)):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40 + i, 30), colour).save(folder / f"{i}.png")
    name = f"imagefolder:{tmp_path}"
    data = load_train(name, img_size=16)
    assert data.train.x.shape == (6, 3, 16, 16) and load_test(name, 16).x.shape == (4, 3, 16, 16)
    assert data.classes == ("cat", "dog") and data.train.x.dtype == torch.uint8
    assert readers.input_shape(name, 3, 1000) == (3, 2)
    with pytest.raises(DataNotFoundError, match="no train folder"):
        load_train(f"imagefolder:{tmp_path / 'train'}", 16)


# ------------------------------------------------------------------------------------------ training


def accuracy_spec(**kw) -> CellSpec:
    settings = dict(model="resnet20", task="train_eval", batch_size=64, img_size=28, dataset="fashion-mnist",
                    train_size=2000, budget=Budget(epochs=1.0))
    settings.update(kw)
    spec = CellSpec(**settings)
    return TASKS[spec.task].check(spec)


def ctx_for(tmp_path):
    return CellContext("t", "r", tmp_path)


def rows_by_metric(rows):
    assert {r["status"] for r in rows} == {"ok"}, rows
    return {r["metric"]: r for r in rows}


@needs_fmnist
@pytest.mark.slow
def test_converged_training_beats_chance_and_reports_selection(tmp_path):
    spec = accuracy_spec(budget=Budget(epochs=2.0, patience=3))
    rows = rows_by_metric(run_cell(spec, ctx_for(tmp_path)))
    assert rows["accuracy"]["value"] > 0.5  # 10 classes: chance is 0.1
    first = rows["accuracy"]
    assert first["protocol"] == "converged" and first["train_size_used"] == 2000 and first["val_size"] == 1000
    assert first["steps"] == 2 * (2000 // 64) and not first["converged"]  # 2 epochs: the cap, not a plateau
    assert rows["images_seen"]["value"] == first["steps"] * 64
    assert 0 < rows["val_accuracy"]["value"] <= 1 and 0 < first["best_epoch"] <= 2.0
    assert first["train_size"] == 2000 and first["budget"] == '{"epochs":2.0,"patience":3}'
    curve = json.loads((tmp_path / "curves" / f"{spec.cell_id}.json").read_text())["curve"]
    assert [p["step"] for p in curve] == [32, 62]  # every 2,048 images (32 steps of 64), and at the cap
    assert {"train_loss", "val_accuracy", "images_seen", "epoch", "seconds"} <= set(curve[0])


MU7_FLOPS_PER_IMAGE = (
    2 * 16 * 49 * 128  # patch embedding: 16 patches, a 7x7x1 -> 128 projection each
    + 6 * (2 * 17 * 128 * 384  # qkv over 17 tokens
           + 2 * (2 * 4 * 17 * 17 * 32)  # q k^T and attn v over 4 heads of 32
           + 2 * 17 * 128 * 128  # output projection
           + 2 * (2 * 17 * 128 * 256))  # MLP 128 -> 256 -> 128
    + 2 * 128 * 10  # head on the class token
)


@needs_fmnist
@pytest.mark.slow
def test_train_flops_budget_and_count_equal_a_hand_count(tmp_path):
    assert MU7_FLOPS_PER_IMAGE == 27_829_760
    budget = Budget(train_flops=3 * MU7_FLOPS_PER_IMAGE * 64 * 10, evals=2)  # exactly 10 steps of 64 images
    rows = rows_by_metric(run_cell(accuracy_spec(model="vit:Mu/7", budget=budget), ctx_for(tmp_path)))
    assert rows["accuracy"]["steps"] == 10 and rows["accuracy"]["protocol"] == "compute-equal"
    assert rows["train_flops"]["value"] == 3 * MU7_FLOPS_PER_IMAGE * 640
    assert rows["accuracy"]["gflops"] == pytest.approx(MU7_FLOPS_PER_IMAGE / 1e9)


@needs_fmnist
@pytest.mark.slow
def test_seconds_budget_is_honoured_within_a_few_percent(tmp_path):
    rows = rows_by_metric(run_cell(accuracy_spec(model="vit:Mu/7", budget=Budget(seconds=6.0, evals=3)),
                                   ctx_for(tmp_path)))
    assert 6.0 <= rows["train_time"]["value"] <= 6.0 * 1.05
    assert rows["accuracy"]["protocol"] == "compute-equal"


@needs_fmnist
def test_the_test_split_is_read_once_after_training(tmp_path, monkeypatch):
    events = []
    real_train, real_load_test = supervised.train_classifier, training.loop.load_test

    def train(*args, **kwargs):
        events.append("train start")
        result = real_train(*args, **kwargs)
        events.append("train end")
        return result

    def test_split(*args, **kwargs):
        events.append("test loaded")
        return real_load_test(*args, **kwargs)

    monkeypatch.setattr(supervised, "train_classifier", train)
    monkeypatch.setattr(training.loop, "load_test", test_split)
    rows = run_cell(accuracy_spec(train_size=256, budget=Budget(epochs=1.0, evals=1)), ctx_for(tmp_path))
    assert {r["status"] for r in rows} == {"ok"} and events == ["train start", "train end", "test loaded"]


@needs_fmnist
@pytest.mark.slow
@pytest.mark.parametrize("model", ["vit:Mu/7", "timm-vit:Mu/7"])
def test_pretrain_then_finetune_loads_the_checkpoint(tmp_path, model):
    budget = Budget(epochs=1.0, evals=1)
    pre_spec = accuracy_spec(model=model, task="pretrain", dataset="fashion-mnist:0-4", train_size=500, budget=budget)
    pre = run_cell(pre_spec, ctx_for(tmp_path))
    assert {r["status"] for r in pre} == {"ok"}, pre
    path = tmp_path / "checkpoints" / f"{pre_spec.cell_id}.pt"
    assert path.is_file()
    spec = accuracy_spec(model=model, task="finetune", init="fashion-mnist:0-4", dataset="fashion-mnist:5-9",
                         train_size=200, budget=budget, init_cell=pre_spec.cell_id)
    net, info = build_model(model, img_size=28, in_chans=1, num_classes=5)
    supervised.load_init(net, info, spec, ctx_for(tmp_path))
    saved = torch.load(path, weights_only=True)["model"]
    torch.testing.assert_close(net.blocks[3].mlp.fc1.weight, saved["blocks.3.mlp.fc1.weight"])
    rows = run_cell(spec, ctx_for(tmp_path))
    assert {r["status"] for r in rows} == {"ok"} and rows[0]["init_used"] == f"checkpoints/{pre_spec.cell_id}.pt"
    assert rows[0]["init"] == "fashion-mnist:0-4"  # requested beside effective


@needs_fmnist
def test_finetune_without_checkpoint_names_it(tmp_path):
    rows = run_cell(accuracy_spec(task="finetune", init="fashion-mnist:0-4", dataset="fashion-mnist:5-9",
                                  init_cell="0123456789ab"), ctx_for(tmp_path))
    assert rows[0]["status"] == "error"
    assert "checkpoints/0123456789ab.pt is missing" in rows[0]["error"]


@needs_fmnist
def test_non_finite_loss_is_an_error_row(tmp_path):
    spec = accuracy_spec(train_size=256, recipe={"lr": 1e30, "grad_clip": None, "weight_decay": 0},
                         budget=Budget(epochs=2.0, evals=1))
    rows = run_cell(spec, ctx_for(tmp_path))
    assert rows[0]["status"] == "error" and "non-finite train_loss" in rows[0]["error"]


@needs_fmnist
@pytest.mark.slow
def test_every_protocol_round_trips_through_resume(tmp_path):
    suite = tmp_path / "acc.yaml"
    suite.write_text(textwrap.dedent("""
        name: acc
        grid:
          model: ["vit:Mu/7"]
          task: [train_eval]
          dataset: [fashion-mnist]
          img_size: [28]
          train_size: [300]
          batch_size: [64]
          budget: [{epochs: 1, patience: 2}, {epochs: 1, evals: 1}, {seconds: 2, evals: 1}]
    """))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "bench", "run", str(suite), "--run-dir", str(run_dir), "--device", "cpu",
               "--allow-mixed-versions"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "3 already done" in again.stdout
    frame = pd.read_csv(run_dir / "results.csv")
    acc = frame[frame["metric"] == "accuracy"].set_index("protocol")
    assert sorted(acc.index) == ["compute-equal", "converged", "fixed"] and len(frame["cell_id"].unique()) == 3
    assert acc.loc["fixed", "budget"] == '{"epochs":1.0,"evals":1}'
    assert acc.loc["converged", "budget"] == '{"epochs":1.0,"patience":2}' and not acc.loc["converged", "converged"]
    assert acc.loc["compute-equal", "budget"] == '{"seconds":2.0,"evals":1}'
