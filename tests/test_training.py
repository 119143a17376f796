"""bench/training: the schedules (a validation plateau stops training, drops the rate, keeps the best weights;
a cap is not convergence), the shared loop with an objective that keeps its last weights, and checkpoints
written atomically (a full disk is ENOSPC, nothing half-written is left)."""

import errno

import pytest
import torch

from bench import training
from bench.data import Split, TrainData
from bench.models import build_model
from bench.spec import Budget
from bench.training.loop import Objective, TrainResult
from tests.test_accuracy import accuracy_spec


def random_data() -> TrainData:
    torch.manual_seed(0)
    x = torch.randint(0, 255, (256, 1, 28, 28), dtype=torch.uint8)
    return TrainData("t", Split(x, torch.arange(256) % 10), tuple("abcdefghij"), (0.5,), (0.5,), True)


def _scripted_training(monkeypatch, scripted: list[float], budget: Budget) -> tuple[TrainResult, list]:
    """train_classifier on 200 random images with the validation accuracies scripted; (result, the weights and
    learning rate at each evaluation)."""
    data = random_data()
    model = build_model("resnet20", img_size=28, in_chans=1, num_classes=10)[0]
    accuracies, snapshots = iter(scripted), []

    def fake_evaluate(model, *args, **kwargs):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(accuracies), 1.0

    monkeypatch.setattr(training.loop, "evaluate", fake_evaluate)
    spec = accuracy_spec(budget=budget, batch_size=32)
    idx = torch.arange(256)
    result = training.train_classifier(model, spec, training.RECIPES[("cnn", "scratch")], data, idx[:200], idx[200:],
                                       1.0)
    return result, snapshots


def test_a_plateau_stops_training_and_restores_the_best_checkpoint(monkeypatch):
    """Scripted validation accuracies: the best is the 2nd evaluation; patience 2 without learning-rate drops
    stops after the 4th, converged."""
    budget = Budget(epochs=100.0, patience=2, lr_drops=0, eval_images=192)
    result, snapshots = _scripted_training(monkeypatch, [0.5, 0.9, 0.6, 0.55, 0.5, 0.4], budget)
    assert len(snapshots) == 4 and result.stopped_early and result.converged and result.best_val == 0.9
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][key], msg=key)
    assert not torch.equal(snapshots[1]["fc.weight"], snapshots[3]["fc.weight"])
    assert result.best_step == result.curve.points[1]["step"]


def test_a_plateau_drops_the_learning_rate_before_it_stops(monkeypatch):
    budget = Budget(epochs=100.0, patience=2, lr_drops=1, eval_images=192)
    result, _ = _scripted_training(monkeypatch, [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7], budget)
    lrs = [p["lr"] for p in result.curve.points]
    assert len(lrs) == 7 and result.converged  # drop after the 4th, a gain at the 5th, stop after the 7th
    assert lrs[4] == pytest.approx(lrs[2] / 10) and lrs[6] == pytest.approx(lrs[4])


def test_a_gain_of_one_validation_image_is_no_progress(monkeypatch):
    budget = Budget(epochs=100.0, patience=2, lr_drops=0, eval_images=192)
    result, snapshots = _scripted_training(monkeypatch, [0.5, 0.501, 0.502, 0.6], budget)
    assert len(snapshots) == 3 and result.converged


def test_a_still_rising_curve_at_its_cap_is_not_converged(monkeypatch):
    budget = Budget(epochs=6.0, patience=2, eval_images=192)  # 6 epochs of 6 steps: evaluations at 6, 12, ... 36
    result, snapshots = _scripted_training(monkeypatch, [0.1 * i for i in range(1, 9)], budget)
    assert len(snapshots) == 6 and not result.converged and not result.stopped_early


class Unscored(Objective):
    """An objective without a validation score (as the MAE's): the loop keeps the last weights."""

    def __init__(self):
        self.validations = 0

    def loss(self, model, x, y):
        return model(x).float().pow(2).mean(), {}

    def validate(self, model):
        self.validations += 1
        return {"probe": float(self.validations)}, None


def test_an_objective_without_a_score_keeps_its_last_weights():
    data = random_data()
    model = build_model("resnet20", img_size=28, in_chans=1, num_classes=10)[0]
    spec = accuracy_spec(budget=Budget(epochs=2.0, evals=3), batch_size=32)
    recipe = training.RECIPES[("cnn", "scratch")]
    augment = training.loop.DeviceAugment(data, 28)
    objective = Unscored()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = training.train(model, objective, spec, recipe, data, torch.arange(200), 1.0, augment)
    assert result.best_val is None and result.model is model and objective.validations == 3
    assert [p["probe"] for p in result.curve.points] == [1.0, 2.0, 3.0] and "train_loss" in result.curve.points[0]
    assert not torch.equal(before["fc.weight"], model.state_dict()["fc.weight"])
    assert result.best_step == result.clock.steps == 12  # 2 epochs of 6 batches of 32


def test_a_checkpoint_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "cell.pt"
    training.save_checkpoint({"w": torch.ones(3)}, path)
    assert torch.equal(torch.load(path)["w"], torch.ones(3))

    def full_disk(state, file):
        file.write(b"partial")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(training.loop.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    with pytest.raises(OSError) as err:
        training.save_checkpoint({"w": torch.zeros(3)}, path)
    assert err.value.errno == errno.ENOSPC
    assert torch.equal(torch.load(path)["w"], torch.ones(3))  # the old checkpoint stands
    assert [p.name for p in path.parent.iterdir()] == ["cell.pt"]  # no temp file left behind
