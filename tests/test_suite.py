"""Suite validation (one test per kind of bad input) and grid expansion."""

import textwrap

import pytest

from bench.__main__ import main
from bench.suite import SuiteError, load_suite

GOOD = """
name: t
grid:
  model: ["vit:Mu/4", resnet20]
  task: [infer, train]
  img_size: [28]
"""


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text, device="cpu"):
    with pytest.raises(SuiteError) as err:
        load_suite(write(tmp_path, text), device)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    return message


@pytest.mark.parametrize(
    "text,expected",
    [
        (GOOD + "colour: red\n", "colour: unknown key; allowed: name, description"),
        (GOOD.replace("task: [infer, train]", "tasks: [infer]"), "grid.tasks: unknown key; allowed: model, task"),
        (GOOD + "repeats: many\n", "repeats: expected a positive integer, got 'many'"),
        (GOOD.replace("img_size: [28]", "img_size: [28]\n  batch_size: [8, 16, big]"),
         "grid.batch_size[2]: expected a positive integer, got 'big'"),
        (GOOD.replace("img_size: [28]", "img_size: [28]\n  batch_size: [0]"), "grid.batch_size[0]: expected a positive"),
        (GOOD.replace("img_size: [28]", "img_size: [28]\n  dtype: [fp64]"), "grid.dtype[0]: expected one of fp32, fp16, bf16"),
        ("name: t\ngrid: {}\n", "grid: empty grid"),
        ("name: t\ngrid:\n  model: []\n", "grid.model: expected a non-empty list"),
        ("name: t\n", "grid: missing"),
        ("grid:\n  model: [resnet20]\n", "name: expected a name"),
        (GOOD.replace("resnet20", "vgg16"), "grid.model[1]: unknown model spec 'vgg16'; known: vit:<variant>"),
        (GOOD.replace("img_size: [28]", "img_size: [30]"), "patch size 4 does not divide image size 30"),
        (GOOD + "exclude: [{modle: resnet20}]\n", "exclude[0].modle: unknown key"),
        (GOOD + "cpu:\n  warmups: 3\n", "cpu.warmups: unknown key; allowed: grid, include, exclude"),
        (GOOD + "exclude:\n  - {img_size: 28}\n", "grid: no cells left after include/exclude"),
        ("name: t\ngrid:\n  model: [resnet20]\n  task: [train_eval]\n", "needs a real dataset"),
        ("name: t\ngrid:\n  model: [resnet20]\n  task: [finetune]\n  dataset: [fashion-mnist]\n", "needs init"),
        ("name: t\ngrid:\n  task: [attention]\n", "needs attn_shape"),
        ("name: t\ngrid:\n  task: [attention]\n  attn_shape: [[1, 2, 3]]\n", "expected [batch, heads, seq_len, head_dim]"),
        ("name: t\ngrid: [model: [resnet20]\n", "invalid YAML"),
        ("- just\n- a list\n", "<top level>: expected a mapping"),
    ],
)
def test_invalid_suites_name_file_key_and_allowed(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


def test_missing_file(tmp_path):
    with pytest.raises(SuiteError, match="cannot read suite file"):
        load_suite(tmp_path / "nope.yaml")


def test_cli_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("[28]", "[28, -1]"))
    assert main(["run", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}: grid.img_size[1]: expected a positive integer, got -1"


def test_grid_product_include_exclude(tmp_path):
    suite = load_suite(write(tmp_path, GOOD + """
exclude:
  - {model: resnet20, task: train}
include:
  - {model: "vit:Mu/7", img_size: 28, batch_size: 4}
"""), "cpu")
    labels = [(c.model, c.task, c.batch_size) for c in suite.cells]
    assert labels == [("vit:Mu/4", "infer", 32), ("vit:Mu/4", "train", 32), ("resnet20", "infer", 32),
                      ("vit:Mu/7", "infer", 4)]
    assert len({c.cell_id for c in suite.cells}) == 4


def test_device_blocks_replace_axes_or_whole_grid(tmp_path):
    text = GOOD + """
repeats: 7
cuda:
  repeats: 3
  grid: {img_size: [32], batch_size: [256]}
cpu:
  grid:
    - {model: [resnet20], img_size: [28]}
"""
    cuda = load_suite(write(tmp_path, text), "cuda")
    assert {(c.img_size, c.batch_size) for c in cuda.cells} == {(32, 256)} and len(cuda.cells) == 4
    assert cuda.repeats == 3 and cuda.cells[0].settings["repeats"] == 3
    cpu = load_suite(write(tmp_path, text), "cpu")
    assert [(c.model, c.task) for c in cpu.cells] == [("resnet20", "infer")] and cpu.repeats == 7


def test_cell_id_is_stable_and_depends_on_settings(tmp_path):
    a = load_suite(write(tmp_path, GOOD), "cpu").cells
    b = load_suite(write(tmp_path, GOOD.replace("name: t", "name: t\nrepeats: 9")), "cpu").cells
    assert [c.cell_id for c in a] == [c.cell_id for c in load_suite(write(tmp_path, GOOD), "cpu").cells]
    assert {c.cell_id for c in a}.isdisjoint(c.cell_id for c in b)


@pytest.mark.parametrize("name", ["smoke", "scaling", "attention", "data_efficiency"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_shipped_suites_are_valid(name, device):
    from pathlib import Path

    suite = load_suite(Path(__file__).parent.parent / "suites" / f"{name}.yaml", device)
    assert suite.cells and suite.device == device
