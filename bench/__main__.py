"""python -m bench run SUITE.yaml | list | report RUN_DIR ... | compare RUN_A RUN_B

Exit codes: 0 every cell ran or was recorded (failed cells are rows, not crashes); 2 invalid suite, arguments,
run dir or results file (one line on stderr); 1 the runner itself failed, or compare --fail-above found a
regression.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


class UsageError(Exception):
    pass


def _gpu_list(text: str) -> list[str]:
    gpus = [g.strip() for g in text.split(",")]
    if not all(g.isdigit() for g in gpus):
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,1,2, got {text!r}")
    return gpus


def _cmd_run(args) -> int:
    from .runner import default_run_dir, run_suite, summary_table
    from .suite import load_suite

    suite = load_suite(args.suite, args.device, max_cells=args.max_cells)
    if args.dry_run:
        print(f"suite {suite.name} ({suite.path}) on {suite.device}: {len(suite.cells)} cells")
        for i, cell in enumerate(suite.cells, 1):
            print(f"  {i:>3}. {cell.cell_id}  {cell.label()}")
        return 0
    if suite.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"{suite.path}: device cuda: no CUDA device is visible here (use --device cpu, or "
                             "--dry-run to list the GPU cells)")
    if args.gpus and suite.device != "cuda":
        raise UsageError("--gpus applies to suites running on cuda")
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(suite)
    summary = run_suite(suite, run_dir, command=sys.argv, retry_failed=args.retry_failed,
                        allow_mixed_versions=args.allow_mixed_versions, executor=args.executor, gpus=args.gpus,
                        address=args.address)
    print()
    print(summary_table(summary.rows))
    print(f"\n{summary.ran} cells run, {summary.skipped} already done, {summary.failed} failed (recorded as rows)")
    if summary.noisy:
        print(f"warning: {len(summary.noisy)} cell(s) with suspicious timings (see the noisy column): "
              + "; ".join(summary.noisy))
    print(f"results: {run_dir / 'results.csv'}\nenvironment: {run_dir / 'env.json'}")
    if args.report:
        from .report import write_report

        print(f"report: {write_report([run_dir], run_dir / 'report')}")
    else:
        print(f"report: python -m bench report {run_dir}")
    return 0


def _cmd_list(args) -> int:
    import vit_impl

    from .models import SPEC_FORMS
    from .spec import describe_axes
    from .suite import describe_settings
    from .tasks import describe_tasks

    print("model specs:")
    for form in SPEC_FORMS:
        print(f"  {form}")
    print("\nViT variants (width / depth / heads / mlp ratio):")
    for name, shape in vit_impl.VARIANTS.items():
        print(f"  {name + '/<patch>':<10} {shape.embed_dim:>5} {shape.depth:>3} {shape.num_heads:>3} {shape.mlp_ratio:>4}")
    print("\ntasks (kind: throughput cells run alone on a device, accuracy cells may share it):")
    print(describe_tasks())
    print("\nsuites:")
    for path in sorted(SUITES_DIR.glob("*.yaml")):
        print(f"  {path.relative_to(SUITES_DIR.parent)}")
    print("\nsuite settings:")
    print(describe_settings())
    print("\nsuite grid axes:")
    print(describe_axes())
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    run_dirs = [Path(d) for d in args.run_dirs]
    for run_dir in run_dirs:
        if not (run_dir / "results.csv").is_file():
            raise UsageError(f"{run_dir}: no results.csv here (expected a run dir from `python -m bench run`)")
    out = Path(args.out) if args.out else run_dirs[0] / "report"
    print(f"report: {write_report(run_dirs, out)}")
    return 0


def _cmd_compare(args) -> int:
    from .compare import compare, format_table

    for run_dir in (args.run_a, args.run_b):
        if not (Path(run_dir) / "results.csv").is_file():
            raise UsageError(f"{run_dir}: no results.csv here (expected a run dir from `python -m bench run`)")
    result = compare(Path(args.run_a), Path(args.run_b), fail_above=args.fail_above,
                     allow_different_devices=args.allow_different_devices, metrics=args.metrics)
    print(format_table(result))
    if args.out:
        result.table.to_csv(args.out, index=False)
        print(f"table: {args.out}")
    return 1 if len(result.regressions) else 0


def _ratio(text: str) -> float:
    value = float(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a factor >= 1 (1.1 = 10% worse), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="ViT vs CNN benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite (resumable with --run-dir)")
    run.add_argument("suite", help="suite YAML file, e.g. suites/scaling.yaml")
    run.add_argument("--run-dir", help="results folder; an existing one is resumed (default results/<suite>/<time>)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the suite's device")
    run.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    run.add_argument("--retry-failed", action="store_true", help="when resuming, run failed cells again")
    run.add_argument("--allow-mixed-versions", action="store_true",
                     help="resume a run dir started with another code version (each row records its own)")
    run.add_argument("--max-cells", type=int, default=2000, metavar="N",
                     help="refuse a grid of more than N cells (default 2000)")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local: subprocesses on this machine; ray: Ray tasks on a cluster (pip install vitbench[ray])")
    run.add_argument("--gpus", type=_gpu_list, help="local executor: GPU indices to use, e.g. 0,1 (default: all "
                                                    "visible)")
    run.add_argument("--address", help="ray executor: cluster address (auto | HOST:PORT; default: a local instance)")
    run.add_argument("--report", action="store_true", help="write the report into RUN_DIR/report at the end")
    run.set_defaults(func=_cmd_run)
    lst = sub.add_parser("list", help="model specs, ViT variants, tasks, suites, settings and grid axes")
    lst.set_defaults(func=_cmd_list)
    rep = sub.add_parser("report", help="tables and plots from one or more run dirs")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", help="output folder (default RUN_DIR/report of the first run dir)")
    rep.set_defaults(func=_cmd_report)
    cmp = sub.add_parser("compare", help="run B against run A: per-cell ratios, noise, regressions")
    cmp.add_argument("run_a", metavar="RUN_A")
    cmp.add_argument("run_b", metavar="RUN_B")
    cmp.add_argument("--fail-above", type=_ratio, metavar="R",
                     help="exit 1 when a metric got worse by more than R (beyond both runs' noise), e.g. 1.1")
    cmp.add_argument("--metrics", type=lambda t: t.split(","), help="only these metrics, e.g. throughput,peak_memory")
    cmp.add_argument("--allow-different-devices", action="store_true", help="compare runs of different devices")
    cmp.add_argument("--out", help="write the whole comparison as CSV")
    cmp.set_defaults(func=_cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .compare import CompareError
    from .results import ResultsError
    from .rundir import RunDirError
    from .suite import SuiteError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SuiteError, RunDirError, ResultsError, CompareError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader is gone, which is not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: finished cells are saved; run again with the same --run-dir to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
