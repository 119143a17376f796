"""Task `rollout`: attention rollout (Abnar & Zuidema 2020) of a native ViT trained by a pretrain cell of this
run (same model, dataset, image size and seed), on six test images. Writes the images, labels, predictions
and rollout maps into artifacts/<cell_id>/; the report draws them (bench/report/artifacts.py) and never loads a
model."""

from __future__ import annotations

import torch

from ..data import DeviceAugment, load_test, load_train
from ..measure.phases import phase
from ..models import build_model, model_family
from ..paths import CellContext
from ..results import RowMaker
from ..spec import CellSpec, SpecError
from ..training import save_checkpoint
from .common import CheckpointRef, Task, check_model_cell, checkpoint_file, reads

READS = reads("model", "img_size", "dataset")  # the pretrain cell it reads; one fp32 pass of six images
N_IMAGES = 6


def check(spec: CellSpec) -> CellSpec:
    spec = check_model_cell(spec)
    if not model_family(spec.model).native_vit:
        raise SpecError("task rollout needs a native ViT (vit:<variant>): it reads every layer's attention")
    if spec.dataset == "synthetic":
        raise SpecError("task rollout shows a trained model on real test images; give the pretrain cell's dataset")
    return spec


def run(spec: CellSpec, ctx: CellContext) -> list[dict]:
    from vit_impl import attention_rollout

    path = checkpoint_file(spec, ctx, pretrain_checkpoint(spec))
    phase("data")
    data = load_train(spec.dataset, spec.img_size)
    test = load_test(spec.dataset, spec.img_size)
    phase("setup")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model, info = build_model(spec.model, img_size=spec.img_size, in_chans=data.in_chans,
                              num_classes=data.num_classes)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    phase("eval")
    picks = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(spec.seed))[:N_IMAGES]
    images, labels = test.x[picks], test.y[picks]
    x = DeviceAugment(data, spec.img_size).normalise(images)
    with torch.no_grad():
        rollout = attention_rollout(model.attention_maps(x))  # (6, g, g)
        predictions = model(x).argmax(-1)
    phase("write")

    data_path = ctx.paths.artifact(spec.cell_id, "attention_rollout.pt")  # the report draws it (report/artifacts.py)
    save_checkpoint({"images": images, "labels": labels, "predictions": predictions, "rollout": rollout,
                     "classes": list(data.classes)}, data_path)
    accuracy = checkpoint.get("accuracy")
    maker = RowMaker(spec, ctx, family=info.family, impl=info.impl, variant=info.variant, patch=info.patch,
                     params=info.params, attn_backend_used=info.attn_backend, data_source=data.source,
                     data_checksum=data.checksum,
                     artifact=ctx.paths.relative(data_path))
    return [maker.row("checkpoint_accuracy", accuracy, n_repeats=1)]


def pretrain_checkpoint(spec: CellSpec) -> CheckpointRef:
    return CheckpointRef(("pretrain",), spec.dataset)


TASKS = (Task("rollout", "accuracy", 2, READS, check, run,
              "attention rollout figure of a pretrain cell's ViT (artifacts/<cell_id>/)",
              reads_checkpoint=pretrain_checkpoint),)
