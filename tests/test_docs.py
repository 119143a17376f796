"""The documentation against the code. The tables in docs/ that copy a registry (the grid axes and the spec's other
fields, the tasks, the shipped suites, the result columns, the metrics) list exactly what the registry holds;
README.md stays a front page that keeps CI's test command; every relative link in README.md, CONTRIBUTING.md and
docs/ points to a file that exists (and, into a markdown file, to one of its headings)."""

import re
from pathlib import Path

import pytest

from bench.results import COLUMNS, METRICS, REQUESTED
from bench.spec import AXES, GRID_AXES
from bench.tasks import TASKS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 250
CI_TEST_COMMAND = "bash tools/install.sh && .venv/bin/python -m pytest"


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.S | re.M)


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row; `\\|` is a pipe inside a cell."""
    parts = re.split(r"(?<!\\)\|", line.strip())
    return [p.strip() for p in parts[1:-1]]


def tables(path: Path) -> list[tuple[list[str], list[list[str]]]]:
    """Every table of a markdown file: (header cells, rows of cells)."""
    found, block = [], []
    for line in [*_prose(path.read_text()).splitlines(), ""]:
        if line.lstrip().startswith("|"):
            block.append(_cells(line))
        elif block:
            if len(block) >= 2 and all(set(c) <= set("-: ") for c in block[1]):
                found.append((block[0], block[2:]))
            block = []
    return found


def rows_under(path: Path, first_header: str) -> list[dict[str, str]]:
    """The rows of every table in `path` whose first header cell is `first_header`, as header -> cell."""
    rows = [dict(zip(header, row)) for header, body in tables(path) if header and header[0] == first_header
            for row in body]
    assert rows, f"{path.relative_to(ROOT)}: no table whose first column is '{first_header}'"
    return rows


def names(cell: str) -> list[str]:
    """The names a cell lists: its `code` spans (several in one cell: `batch_size`, `img_size`)."""
    return re.findall(r"`([^`]+)`", cell)


def listed(path: Path, first_header: str) -> list[str]:
    return [name for row in rows_under(path, first_header) for name in names(row[first_header])]


def same_set(documented: list[str], actual, what: str, where: Path) -> None:
    missing = sorted(set(actual) - set(documented))
    extra = sorted(set(documented) - set(actual))
    twice = sorted({n for n in documented if documented.count(n) > 1})
    assert not (missing or extra or twice), (
        f"{where.relative_to(ROOT)}: the {what} table and the code disagree: missing {missing}, not in the code "
        f"{extra}, listed twice {twice}")


# ------------------------------------------------------------------------------------------ registries


def test_the_axis_table_lists_every_grid_axis():
    same_set(listed(DOCS / "suites.md", "axis"), GRID_AXES, "grid axis (bench/spec.py: CellSpec)",
             DOCS / "suites.md")


def test_the_field_table_lists_the_spec_fields_outside_the_grid():
    outside = [name for name in AXES if name not in GRID_AXES]
    same_set(listed(DOCS / "suites.md", "field"), outside, "spec field (bench/spec.py: CellSpec, grid=False)",
             DOCS / "suites.md")


def test_the_task_table_matches_the_task_registry():
    path = DOCS / "suites.md"
    rows = rows_under(path, "task")
    same_set([n for row in rows for n in names(row["task"])], TASKS, "task (bench/tasks: TASKS)", path)
    for row in rows:
        (name,) = names(row["task"])
        task = TASKS[name]
        assert (row["kind"], row["stage"]) == (task.kind, str(task.stage)), (
            f"{path.relative_to(ROOT)}: task {name}: documented kind {row['kind']}, stage {row['stage']}; the "
            f"registry says kind {task.kind}, stage {task.stage}")


@pytest.mark.parametrize("page", ["docs/suites.md", "README.md"])
def test_the_suite_tables_list_every_shipped_suite(page):
    shipped = [f"suites/{p.name}" for p in (ROOT / "suites").glob("*.yaml")]
    same_set(listed(ROOT / page, "suite"), shipped, "suite (suites/*.yaml)", ROOT / page)


def test_the_column_tables_list_every_result_column():
    """Every column but the requested ones (one per spec field, documented by the axis and field tables)."""
    path = DOCS / "results-schema.md"
    same_set(listed(path, "column"), [c for c in COLUMNS if c not in REQUESTED], "result column "
             "(bench/results.py: COLUMNS)", path)


def test_the_metric_table_matches_the_metrics_registry():
    path = DOCS / "results-schema.md"
    rows = rows_under(path, "metric")
    same_set([n for row in rows for n in names(row["metric"])], METRICS, "metric (bench/results.py: METRICS)", path)
    wrong = []
    for row in rows:
        (name,) = names(row["metric"])
        metric = METRICS[name]
        documented = (row["unit"], row["direction"], row["group"])
        actual = (metric.unit or "-", metric.direction, metric.group)
        if documented != actual:
            wrong.append(f"| `{name}` | {' | '.join(actual)} | (documented: {' | '.join(documented)})")
    assert not wrong, f"{path.relative_to(ROOT)}: unit, direction or group differ from METRICS:\n" + "\n".join(wrong)


# ------------------------------------------------------------------------------------------ the front page


def test_readme_is_a_front_page():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference material to docs/"


def test_readme_keeps_the_test_command_ci_runs():
    """.ci/run runs README's test command: the two must not drift apart."""
    assert CI_TEST_COMMAND in (ROOT / "README.md").read_text()
    assert CI_TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


# ------------------------------------------------------------------------------------------ links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", _prose(path.read_text()), re.M)}


def links(path: Path) -> list[str]:
    """Targets of the markdown links and images of a file, outside code."""
    text = re.sub(r"`[^`\n]*`", "", _prose(path.read_text()))
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading with that anchor in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {'; '.join(broken)}"


def test_the_link_checker_sees_links_and_anchors(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Title\n\n## The `x` axis: what (it) is\n\nSee [b](b.md#top), ![f](f.png), [here](#the-x-axis-"
                    "what-it-is), `[not](a link)` and\n\n```\n[nor](this)\n```\n")
    assert links(page) == ["b.md#top", "f.png", "#the-x-axis-what-it-is"]
    assert anchors(page) == {"title", "the-x-axis-what-it-is"}


def test_table_cells_keep_escaped_pipes(tmp_path):
    page = tmp_path / "t.md"
    page.write_text("| axis | values |\n|---|---|\n| `dtype` | `fp32` \\| `bf16` |\n")
    assert tables(page) == [(["axis", "values"], [["`dtype`", "`fp32` \\| `bf16`"]])]
