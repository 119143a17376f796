"""Tasks pretrain_mae and linear_probe, and fine-tuning from an MAE encoder (init: mae:<dataset>)."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.data import readers
from bench.cell import run_cell
from bench.paths import CellContext
from bench.report.artifacts import DRAWERS
from bench.spec import Budget, CellSpec, SpecError
from bench.tasks import TASKS
from tests.conftest import needs_fmnist


def cell(**kw) -> CellSpec:
    settings = dict(model="vit:Mu/7", task="pretrain_mae", img_size=28, dataset="fashion-mnist", batch_size=64,
                    budget=Budget(epochs=1.0, evals=2), train_size=640)
    settings.update(kw)
    spec = CellSpec(**settings)
    return TASKS[spec.task].check(spec)


@pytest.mark.parametrize("changes,message", [
    ({"dataset": "fashion-mnist:0-4"}, "no class range"),
    ({"model": "resnet20"}, "needs a native ViT"),
    ({"mae": {"mask_ratio": 0.99}}, "leaves no visible patch"),
    ({"mae": {"decoder_dim": 100, "decoder_heads": 3}}, "decoder_dim must be divisible"),
    ({"init": "mae:fashion-mnist"}, "init does not apply"),
    ({"budget": Budget(epochs=1.0, patience=2)}, "without patience"),
])
def test_pretrain_mae_rules(changes, message):
    with pytest.raises(SpecError, match=message):
        cell(**changes)


def test_probe_and_init_rules():
    with pytest.raises(SpecError, match="needs init"):
        cell(task="linear_probe")
    with pytest.raises(SpecError, match="needs a native ViT"):
        cell(task="finetune", model="resnet20", init="mae:fashion-mnist")
    with pytest.raises(SpecError, match="pool does not apply to task finetune"):
        cell(task="finetune", init="mae:fashion-mnist", pool="mean")


@needs_fmnist
@pytest.mark.slow
def test_mae_pretrains_without_labels_then_fine_tunes_and_probes(tmp_path, monkeypatch):
    ctx = CellContext("t", "r", tmp_path)
    monkeypatch.setenv("VITBENCH_CACHE", str(tmp_path / "cache"))  # decoded here, not read from a cache
    real_read = readers.read_idx

    def no_labels(path, ndim=None):
        assert "labels" not in Path(path).name, "pretrain_mae opened a label file"
        return real_read(path, ndim)

    with monkeypatch.context() as patch:
        patch.setattr(readers, "read_idx", no_labels)
        mae_spec = cell()
        rows = {r["metric"]: r for r in run_cell(mae_spec, ctx)}
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    assert rows["recon_loss"]["value"] > 0 and rows["train_flops"]["value"] > 0
    assert rows["recon_loss"]["train_size_used"] == 640 and rows["recon_loss"]["val_size"] == 1000
    saved = torch.load(tmp_path / rows["recon_loss"]["artifact"], weights_only=True)  # the report draws it
    assert saved["images"].shape == saved["reconstruction"].shape == saved["masked"].shape
    figure = DRAWERS["recon_loss"][1](saved, pd.Series({"model": "vit:Mu/7", "dataset": "fashion-mnist"}))
    assert "75% of patches masked" in figure._suptitle.get_text()
    path = ctx.paths.checkpoint(mae_spec.cell_id)
    encoder = torch.load(path, weights_only=True)["model"]
    # MAE's encoder sees a quarter of the patches: with its light decoder it costs well under a full ViT
    full = {r["metric"]: r["value"] for r in run_cell(cell(task="train_eval", budget=Budget(epochs=1.0, evals=1),
                                                           train_size=640), ctx)}
    mae_per_image = rows["train_flops"]["value"] / rows["images_seen"]["value"]
    assert mae_per_image < 0.7 * full["train_flops"] / full["images_seen"]

    tune = run_cell(cell(task="finetune", init="mae:fashion-mnist", train_size=300, init_cell=mae_spec.cell_id), ctx)
    assert {r["status"] for r in tune} == {"ok"} and tune[0]["init_used"] == f"checkpoints/{mae_spec.cell_id}.pt"

    probe = run_cell(cell(task="linear_probe", init="mae:fashion-mnist", train_size=300, pool="mean",
                          budget=Budget(epochs=20.0, evals=2), init_cell=mae_spec.cell_id), ctx)
    assert {r["status"] for r in probe} == {"ok"}, probe
    acc = next(r for r in probe if r["metric"] == "accuracy")
    assert acc["value"] > 0.2  # 10 classes: a linear head on (briefly pretrained) MAE features beats chance
    assert encoder["blocks.0.attn.qkv.weight"].shape == (384, 128)


def test_a_probe_trains_its_head_only_and_keeps_the_encoder_in_eval_mode():
    from bench.models import build_model
    from bench.tasks.supervised import Probe

    probe = Probe(build_model("vit:Mu/7", img_size=28, in_chans=1, num_classes=10)[0], "cls").train()
    trainable = {name for name, p in probe.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"} and not probe.encoder.training and probe.head.training
    assert probe(torch.randn(4, 1, 28, 28)).shape == (4, 10)


@needs_fmnist
def test_rollout_saves_maps_of_a_pretrained_vit_that_the_report_draws(tmp_path):
    ctx = CellContext("transfer", "r", tmp_path)
    settings = dict(model="vit:Mu/7", dataset="fashion-mnist:0-4", img_size=28, seed=0)
    pretrain = TASKS["pretrain"].check(CellSpec(task="pretrain", train_size=256, batch_size=64,
                                                budget=Budget(epochs=1.0, evals=1), **settings))
    assert {r["status"] for r in run_cell(pretrain, ctx)} == {"ok"}
    rollout = TASKS["rollout"].check(CellSpec(task="rollout", init_cell=pretrain.cell_id, **settings))
    (row,) = run_cell(rollout, ctx)
    assert row["status"] == "ok" and row["artifact"].endswith("attention_rollout.pt"), row
    saved = torch.load(tmp_path / row["artifact"], weights_only=True)
    assert saved["rollout"].shape == (6, 4, 4) and saved["images"].shape == (6, 1, 28, 28)
    figure = DRAWERS["checkpoint_accuracy"][1](saved, pd.Series(row))
    assert "Attention rollout of vit:Mu/7" in figure._suptitle.get_text()
