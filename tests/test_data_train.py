"""Data: search order, missing-data error, nested stratified subsets, augmentation. Training: a short real
run beats chance, fine-tuning loads a checkpoint, a non-finite loss becomes an error row."""

import gzip
import json
import struct

import pytest
import torch

from bench import data as data_mod
from bench import train as train_mod
from bench.cell import Job, run_cell
from bench.data import DataNotFoundError, DeviceAugment, load_dataset, stratified_subset

HAVE_FMNIST = any((p / "train-labels-idx1-ubyte.gz").exists() or (p / "train-labels-idx1-ubyte").exists()
                  for p in data_mod.fashion_mnist_search_path())
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (tools/install.sh)")


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype("uint8").tobytes())


def fake_fashion(folder, n_train=40, n_test=20, value=7):
    import numpy as np

    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.full((n_train, 28, 28), value))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.full((n_test, 28, 28), value))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)


def test_vitbench_data_is_searched_first(tmp_path, monkeypatch):
    fake_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("VITBENCH_DATA", str(tmp_path))
    assert data_mod.fashion_mnist_search_path()[:2] == [tmp_path / "fashion-mnist",
                                                        data_mod.Path("/usr/share/datasets/fashion-mnist")]
    data = load_dataset("fashion-mnist")
    assert data.train_x.shape == (40, 1, 28, 28) and data.test_x.shape == (20, 1, 28, 28)
    assert int(data.train_x.max()) == 7 and data.num_classes == 10  # the fake files, not the real ones


def test_class_range_relabels(tmp_path, monkeypatch):
    fake_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("VITBENCH_DATA", str(tmp_path))
    data = load_dataset("fashion-mnist:5-9")
    assert data.classes == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert sorted(data.train_y.unique().tolist()) == [0, 1, 2, 3, 4] and len(data.train_y) == 20


def test_missing_data_names_places_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "fashion_mnist_search_path", lambda: [tmp_path / "a", tmp_path / "b"])
    monkeypatch.setattr(data_mod.Path, "home", lambda: tmp_path / "home")

    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.FashionMNIST", offline)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("fashion-mnist")
    message = str(err.value)
    for expected in (str(tmp_path / "a"), str(tmp_path / "b"), "apt-get install dataset-fashion-mnist",
                     "$VITBENCH_DATA/fashion-mnist", "network unreachable"):
        assert expected in message


def test_truncated_idx_is_rejected(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 100) + b"\x00" * 10)
    with pytest.raises(ValueError, match="truncated"):
        data_mod.read_idx(path)


def test_synthetic_is_not_a_dataset_for_accuracy():
    with pytest.raises(ValueError, match="throughput and memory only"):
        load_dataset("synthetic")


def test_subsets_are_stratified_and_nested():
    labels = torch.arange(60_000) % 10
    labels = labels[torch.randperm(60_000, generator=torch.Generator().manual_seed(5))]
    small, large = stratified_subset(labels, 1000, seed=3), stratified_subset(labels, 5000, seed=3)
    assert set(small.tolist()) <= set(large.tolist())
    for subset, size in ((small, 1000), (large, 5000)):
        counts = torch.bincount(labels[subset], minlength=10)
        assert len(set(subset.tolist())) == size and (counts - size // 10).abs().max() <= 1
    other_seed = stratified_subset(labels, 1000, seed=4)
    assert set(other_seed.tolist()) != set(small.tolist())
    assert len(stratified_subset(labels, None, seed=0)) == 60_000


def test_augmentation_shapes_and_normalisation():
    data = data_mod.ImageData("t", torch.full((4, 1, 28, 28), 255, dtype=torch.uint8), torch.zeros(4).long(),
                              torch.zeros((2, 1, 28, 28), dtype=torch.uint8), torch.zeros(2).long(), ["a"],
                              (0.5,), (0.5,), hflip=True)
    aug = DeviceAugment(data, img_size=32)
    out = aug.train(data.train_x, torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 32, 32) and out.dtype == torch.float32
    assert out.max().item() == pytest.approx(1.0, abs=1e-3) and out.min().item() == pytest.approx(-1.0, abs=1e-3)
    torch.testing.assert_close(aug.eval(data.test_x), torch.full((2, 1, 32, 32), -1.0))


def job_for(run_dir, **cell):
    settings = {"model": "resnet20", "task": "train_eval", "batch_size": 64, "img_size": 28, "dtype": "fp32",
                "attn_backend": "sdpa", "compile": False, "dataset": "fashion-mnist", "train_size": 2000, "seed": 0,
                "in_chans": 3, "num_classes": 1000, "attn_shape": None, "steps": 60, "min_epochs": 1, "init": None,
                "device": "cpu", "repeats": 1, "warmup": 0, "iters": 1}
    settings.update(cell)
    return Job(cell=settings, cell_id=json.dumps(cell, sort_keys=True)[:40].replace("/", "_"), suite="t", run_id="r",
               run_dir=str(run_dir))


def metric(rows, name):
    return next(r["value"] for r in rows if r["metric"] == name)


@needs_fmnist
@pytest.mark.slow
def test_short_training_beats_chance(tmp_path):
    rows = run_cell(job_for(tmp_path))
    assert {r["status"] for r in rows} == {"ok"}, rows
    assert metric(rows, "accuracy") > 0.5  # 10 classes: chance is 0.1
    assert metric(rows, "images_seen") == 60 * 64
    curve = json.loads(next((tmp_path / "curves").glob("*.json")).read_text())["curve"]
    assert curve[-1]["step"] == 60 and len(curve) == 2  # 31 steps per epoch -> 2 epochs


@needs_fmnist
@pytest.mark.slow
def test_pretrain_then_finetune_loads_the_checkpoint(tmp_path):
    common = dict(model="vit:Mu/7", batch_size=64, steps=5, min_epochs=0)
    pre = run_cell(job_for(tmp_path, task="pretrain", dataset="fashion-mnist:0-4", train_size=500, **common))
    assert {r["status"] for r in pre} == {"ok"}, pre
    ckpt_path = train_mod.checkpoint_path(tmp_path, "vit:Mu/7", "fashion-mnist:0-4", 28, 0)
    assert ckpt_path.is_file()
    job = job_for(tmp_path, task="finetune", init="fashion-mnist:0-4", dataset="fashion-mnist:5-9", train_size=200,
                  **common)
    from bench.models import build_model

    model, info = build_model("vit:Mu/7", img_size=28, in_chans=1, num_classes=5)
    train_mod._load_init(model, info, job)
    saved = torch.load(ckpt_path, weights_only=True)["model"]
    torch.testing.assert_close(model.blocks[3].mlp.fc1.weight, saved["blocks.3.mlp.fc1.weight"])
    rows = run_cell(job)
    assert {r["status"] for r in rows} == {"ok"} and rows[0]["init"] == str(ckpt_path)


@needs_fmnist
def test_finetune_without_checkpoint_names_it(tmp_path):
    rows = run_cell(job_for(tmp_path, task="finetune", init="fashion-mnist:0-4", dataset="fashion-mnist:5-9",
                            steps=1))
    assert rows[0]["status"] == "error"
    assert "resnet20__fashion-mnist-0-4__28px__seed0.pt is missing" in rows[0]["error"]


@needs_fmnist
def test_non_finite_loss_is_an_error_row(tmp_path, monkeypatch):
    exploding = train_mod.Recipe("sgd", lr=1e30, weight_decay=0.0, warmup_frac=0.0, label_smoothing=0.0,
                                 grad_clip=None)
    monkeypatch.setitem(train_mod.RECIPES, ("cnn", "scratch"), exploding)
    rows = run_cell(job_for(tmp_path, train_size=256, steps=8, min_epochs=0))
    assert rows[0]["status"] == "error" and "non-finite training loss" in rows[0]["error"]


def test_imagefolder_loads_and_resizes(tmp_path):
    from PIL import Image

    for split, per_class in (("train", 3), ("val", 2)):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40 + i, 30), colour).save(folder / f"{i}.png")
    data = load_dataset(f"imagefolder:{tmp_path}", img_size=16)
    assert data.train_x.shape == (6, 3, 16, 16) and data.test_x.shape == (4, 3, 16, 16)
    assert data.classes == ["cat", "dog"] and data.train_x.dtype == torch.uint8
    assert data_mod.input_shape(f"imagefolder:{tmp_path}", 3, 1000) == (3, 2)
    with pytest.raises(DataNotFoundError, match="no train folder"):
        load_dataset(f"imagefolder:{tmp_path / 'train'}")
