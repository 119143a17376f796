"""Suite validation: every kind of bad input is one line naming the file, the key and what is allowed."""

import json
import textwrap

import pytest

from bench.__main__ import main
from bench.spec import CellSpec, SpecError
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


def error_of(tmp_path, text, device="cpu", **kwargs):
    path = tmp_path / "s.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text))
    with pytest.raises(SuiteError) as err:
        load_suite(path, device, **kwargs)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and len(message) < 700
    return message


@pytest.mark.parametrize(
    "text,expected",
    [
        (GOOD + "colour: red\n", "colour: unknown key; allowed: name, description"),
        (GOOD.replace("task: [infer, train]", "tasks: [infer]"), "grid.tasks: unknown key; allowed: model, task"),
        (GOOD + "repeats: many\n", "repeats: expected a positive integer, got 'many'"),
        (GOOD.replace("img_size: [28]", "img_size: [28]\n  batch_size: [8, 16, big]"),
         "grid.batch_size[2]: expected a positive integer, got 'big'"),
        (GOOD.replace("img_size: [28]", "img_size: [28]\n  dtype: [fp64]"), "grid.dtype[0]: expected one of fp32"),
        ("name: t\ngrid: {}\n", "grid: empty grid entry"),
        ("name: t\ngrid:\n  model: []\n", "grid.model: expected a non-empty list"),
        ("name: t\n", "grid: missing"),
        ("grid:\n  model: [resnet20]\n", "name: expected a plain name"),
        (GOOD.replace("resnet20", "vgg16"), "grid.model[1]: unknown model spec 'vgg16'; known: vit:<variant>"),
        (GOOD.replace("img_size: [28]", "img_size: [30]"), "patch size 4 does not divide image size 30"),
        (GOOD + "exclude: [{modle: resnet20}]\n", "exclude[0].modle: unknown key"),
        (GOOD + "cpu:\n  warmups: 3\n", "cpu.warmups: unknown key; allowed: grid, include, exclude"),
        (GOOD + "exclude:\n  - {img_size: 28}\n", "grid: no cells left after include/exclude"),
        ("name: t\ngrid:\n  model: [resnet20]\n  task: [train_eval]\n  budget: [{epochs: 1}]\n",
         "needs a real dataset"),
        ("name: t\ngrid:\n  model: [resnet20]\n  task: [train_eval]\n  dataset: [fashion-mnist]\n",
         "needs a budget"),
        ("name: t\ngrid:\n  model: [resnet20]\n  task: [finetune]\n  dataset: [fashion-mnist]\n"
         "  budget: [{epochs: 1}]\n", "needs init"),
        ("name: t\ngrid:\n  task: [attention]\n", "needs attn_shape"),
        ("name: t\ngrid:\n  task: [attention]\n  attn_shape: [[1, 2, 3]]\n",
         "expected [batch, heads, seq_len, head_dim]"),
        ("name: t\ngrid:\n  task: [attention]\n  attn_shape: [[1, 2, 3, 4]]\n  model: [resnet20]\n",
         "model does not apply to task attention"),
        ("name: t\ngrid:\n  model: [resnet20]\n  budget: [{epochs: 2}]\n", "budget does not apply to task infer"),
        ("name: t\ngrid:\n  model: ['vit:Mu/4']\n  img_size: [28]\n  compare_to: [{model: 'vit:Mu/4'}]\n",
         "compare_to names the same model"),
        ("name: t\ngrid:\n  model: ['vit:Mu/4']\n  img_size: [28]\n  compare_to: [{model: 'vit:Mu/5'}]\n",
         "patch size 5 does not divide image size 28"),
        ("name: t\ngrid: [model: [resnet20]\n", "invalid YAML at line"),
        ("- just\n- a list\n", "<top level>: expected a mapping"),
        # duplicate keys silently won before
        ("name: t\nname: u\ngrid:\n  model: [resnet20]\n", "duplicate key 'name' (line 2)"),
        ("name: t\ngrid:\n  model: [resnet20]\n  model: [resnet32]\n", "duplicate key 'model'"),
        # names become folders: plain slugs only
        (GOOD.replace("name: t", "name: .."), "name: expected a plain name of 1 to 64 letters"),
        (GOOD.replace("name: t", "name: a/b"), "name: expected a plain name"),
        (GOOD.replace("name: t", "name: " + "x" * 300), "name: expected a plain name"),
        # alias expansion is bounded (the "billion laughs" file is ~400 bytes)
        ("name: t\na: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
         "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\ngrid: {model: [resnet20]}\n", "expands to more than 100000"),
    ],
)
def test_invalid_suites_name_file_key_and_allowed(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


TRAIN = "  task: [train_eval]\n  dataset: [fashion-mnist]\n  budget: [{epochs: 1}]\n"


@pytest.mark.parametrize(
    "grid,expected",
    [  # one thing, two spellings: accepted as two cells before
        ("  model: ['vit:Mu/4', 'vit: Mu/04']\n  img_size: [28]\n",
         "grid.model[1]: model 'vit: Mu/04' is written 'vit:Mu/4'"),
        ("  model: ['timm-vit:Mu/04']\n  img_size: [28]\n", "model 'timm-vit:Mu/04' is written 'timm-vit:Mu/4'"),
        ("  model: [resnet9, resnet9-w16]\n  img_size: [28]\n", "model 'resnet9-w16' is written 'resnet9'"),
        ("  model: ['timm:resnet18.']\n  img_size: [28]\n", "model 'timm:resnet18.' is written 'timm:resnet18'"),
        ("  model: ['vit:Mu/4']\n  img_size: [28]\n  compare_to: [{model: 'vit:Mu/04'}]\n",
         "grid.compare_to[0]: model 'vit:Mu/04' is written 'vit:Mu/4'"),
        ("  model: [resnet9]\n  dataset: ['fashion-mnist:0-9']\n" + TRAIN.replace("  dataset: [fashion-mnist]\n", ""),
         "grid.dataset[0]: dataset 'fashion-mnist:0-9' is every class: it is written 'fashion-mnist'"),
        ("  model: [resnet9]\n  init: ['mae:fashion-mnist:0-9']\n" + TRAIN.replace("train_eval", "finetune"),
         "(dataset 'fashion-mnist:0-9' is every class: it is written 'fashion-mnist'"),
        # the choice axes (tasks, engines, backends, dtypes) take their one spelling only, and name it
        ("  model: [resnet9]\n  task: [Infer]\n", "grid.task[0]: expected one of infer, train"),
        ("  model: [resnet9]\n  engine: [' eager']\n", "grid.engine[0]: expected one of eager, compile"),
        ("  model: ['vit:Mu/4']\n  attn_backend: [SDPA]\n", "grid.attn_backend[0]: expected one of "),
        # a model spec that is not one (compare_to's was not checked: an internal error)
        ("  model: ['vit:Mu/4']\n  img_size: [28]\n  compare_to: [{model: vgg16}]\n",
         "grid.compare_to[0]: unknown model spec 'vgg16'"),
    ],
)
def test_one_name_per_registry_value_or_refused_naming_it(tmp_path, grid, expected):
    assert expected in error_of(tmp_path, "name: t\ngrid:\n" + grid)


def test_binary_and_non_utf8_and_huge_files(tmp_path):
    assert "binary data" in error_of(tmp_path, b"\x00\x01\x02name: t")
    assert "not UTF-8 text" in error_of(tmp_path, "name: t\n".encode() + b"\xff\xfe")
    assert "a suite file may have at most" in error_of(tmp_path, "# " + "x" * 300_000 + "\n" + GOOD)


def test_large_grids_need_max_cells(tmp_path):
    batches = ", ".join(map(str, range(1, 401)))
    text = f"name: big\ngrid:\n  model: [resnet20]\n  batch_size: [{batches}]\n  img_size: [IMG]\n"
    message = error_of(tmp_path, text.replace("IMG", ", ".join(map(str, range(8, 258)))))
    assert "expands to 100000 cells, more than the limit of 2000; pass --max-cells 100000" in message
    assert len(load_suite(write(tmp_path, text.replace("IMG", "28")), "cpu", max_cells=400).cells) == 400
    assert "more than the limit of 399" in error_of(tmp_path, text.replace("IMG", "28"), max_cells=399)


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
    assert {c.attn_backend for c in suite.cells if c.model == "resnet20"} == {"none"}  # CNNs have no choice


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
    assert cuda.cells[0].repeats == 3
    cpu = load_suite(write(tmp_path, text), "cpu")
    assert [(c.model, c.task) for c in cpu.cells] == [("resnet20", "infer")] and cpu.cells[0].repeats == 7


def test_study_tags_merge_when_two_entries_give_the_same_cell(tmp_path):
    suite = load_suite(write(tmp_path, """
name: t
grid:
  - {study: scaling-by-size, model: [resnet20, resnet32], img_size: [28]}
  - {study: [image-size], model: [resnet20], img_size: [28, 56]}
"""), "cpu")
    tags = {(c.model, c.img_size): c.study for c in suite.cells}
    assert tags == {("resnet20", 28): ("image-size", "scaling-by-size"), ("resnet32", 28): ("scaling-by-size",),
                    ("resnet20", 56): ("image-size",)}


@pytest.mark.parametrize("tag", ["x;scaling-by-size", "a b", "", "x/y", "tag\\n", "é", "x" * 65])
def test_study_tags_are_plain_slugs(tmp_path, tag):
    message = error_of(tmp_path, f"name: t\ngrid:\n  - study: [ok.1_a-b, {json.dumps(tag)}]\n    model: [resnet20]\n")
    assert "grid[0].study: expected a study tag or a list of them, each 1 to 64 letters, digits, '.', '_' or '-'" \
        in message
    with pytest.raises(SpecError, match="study: expected a study tag"):  # a record's spec, read back, too
        CellSpec.from_dict({"study": ["ok", tag]})


def test_a_train_size_above_what_the_dataset_gives_is_said_at_validation(tmp_path, capsys):
    folder = tmp_path / "pets"
    for name in ("cat", "dog"):
        (folder / "train" / name).mkdir(parents=True)
        for i in range(3):
            (folder / "train" / name / f"{i}.png").touch()
    path = write(tmp_path, f"""
        name: t
        grid:
          - model: [resnet9]
            task: [train_eval]
            dataset: [fashion-mnist]
            img_size: [28]
            train_size: [1000, 59000, 100000]
            budget: [{{epochs: 1}}]
          - {{model: [resnet9], task: [train_eval], dataset: ["fashion-mnist:0-4"], train_size: [40000],
             recipe: [{{val_size: 500}}], img_size: [28], budget: [{{epochs: 1}}]}}
          - {{model: ["vit:Mu/4"], task: [pretrain_mae], dataset: [fashion-mnist], train_size: [59000, 59500],
             img_size: [28], budget: [{{epochs: 1}}]}}
          - {{model: [resnet9], task: [train_eval], dataset: ["imagefolder:{folder}"], train_size: [5, 6],
             img_size: [28], budget: [{{epochs: 1}}]}}
        """)
    suite = load_suite(path, "cpu")
    ids = {(c.task, c.dataset, c.train_size): c.cell_id for c in suite.cells}
    capped = {(c.spec.task, c.spec.dataset, c.spec.train_size): (c.pool, c.same_as) for c in suite.capped}
    assert capped == {("train_eval", "fashion-mnist", 100000): (59000, (ids["train_eval", "fashion-mnist", 59000],)),
                      ("train_eval", "fashion-mnist:0-4", 40000): (29500, ()),  # 5 classes, 500 to validation
                      ("pretrain_mae", "fashion-mnist", 59500): (59000, (ids["pretrain_mae", "fashion-mnist", 59000],)),
                      ("train_eval", f"imagefolder:{folder}", 6): (5, (ids["train_eval", f"imagefolder:{folder}", 5],))}
    assert main(["run", str(path), "--dry-run", "--device", "cpu"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 4 and all(str(path) in line for line in warnings)
    assert (f"cell {ids['train_eval', 'fashion-mnist', 100000]} (resnet9 train_eval bs32 28px fp32 fashion-mnist "
            "n=100000 seed0 {\"epochs\":1.0}): train_size 100,000 is more than the 59,000 images a train_eval cell "
            f"draws from fashion-mnist; it trains on 59,000; the same images as cell(s) "
            f"{ids['train_eval', 'fashion-mnist', 59000]}") in warnings[0]


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
