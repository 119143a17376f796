"""python -m bench run SUITE.yaml | list | report RUN_DIR ... | compare RUN_A RUN_B

Exit codes: 0 every cell ran or was recorded (failed cells are rows, not crashes); 2 invalid suite, arguments,
run dir or results file (one line on stderr); 1 the runner itself failed (a full disk, an internal error), or
compare --fail-above found a regression; 130 interrupted by Ctrl-C (128 + the signal for SIGTERM, SIGHUP).
No command shows a traceback (set VITBENCH_DEBUG=1 to see one for an internal error).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, whose errors are one line (no usage block), like every other error of this command."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


class Output:
    """stdout lines that survive their reader going away: `bench run ... | head -1` keeps running, with progress
    off from then on, and says so on stderr."""

    def __init__(self):
        self.closed = False

    def __call__(self, line: str = "") -> None:
        if self.closed:
            return
        try:
            print(line, flush=True)
        except BrokenPipeError:
            self.closed = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush at exit goes nowhere, quietly
            print("note: stdout was closed; the run goes on without progress lines (results in its run dir)",
                  file=sys.stderr)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _gpu_list(text: str) -> list[str]:
    gpus = [g.strip() for g in text.split(",")]
    if not all(g.isdigit() for g in gpus):
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,1,2, got {text!r}")
    return gpus


def _cmd_run(args) -> int:
    from .paths import RunPaths
    from .runner import default_run_dir, noisy_warning, run_suite, summary_table, time_summary
    from .suite import load_suite

    out = Output()
    suite = load_suite(args.suite, args.device, max_cells=args.max_cells)
    for capped in suite.capped:
        out(f"warning: {suite.path}: {capped}")
    if args.dry_run:
        out(f"suite {suite.name} ({suite.path}) on {suite.device}: {len(suite.cells)} cells")
        for i, cell in enumerate(suite.cells, 1):
            out(f"  {i:>3}. {cell.cell_id}  {cell.label()}")
        return 0
    if suite.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"{suite.path}: device cuda: no CUDA device is visible here (use --device cpu, or "
                             "--dry-run to list the GPU cells)")
    if args.gpus and suite.device != "cuda":
        raise UsageError("--gpus applies to suites running on cuda")
    if args.executor == "ray":
        from .executors.ray import check_cluster

        check_cluster(args.address)
    elif args.address:
        raise UsageError("--address applies to --executor ray")
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(suite)
    summary = run_suite(suite, run_dir, command=sys.argv, retry_failed=args.retry_failed,
                        allow_mixed_versions=args.allow_mixed_versions, executor=args.executor, gpus=args.gpus,
                        address=args.address, log=out)
    out()
    out(summary_table(summary.rows))
    out(time_summary(summary.rows))
    out(f"\n{summary.ran} cells run, {summary.skipped} already done, {summary.failed} failed (recorded as rows)")
    if summary.noisy:
        out(noisy_warning(summary.noisy, len({row["cell_id"] for row in summary.rows}), run_dir))
    paths = RunPaths(run_dir)
    out(f"results: {paths.results_csv}\nenvironment: {paths.env_json}")
    if args.report:
        from .report import write_report

        out(f"report: {write_report([run_dir], paths.report_dir)}")
    else:
        out(f"report: python -m bench report {run_dir}")
    return 0


def _cmd_list(args) -> int:
    import vit_impl

    from .models import SPEC_FORMS
    from .spec import describe_axes
    from .suite import describe_settings
    from .tasks import describe_tasks

    out = Output()
    out("model specs:")
    for form in SPEC_FORMS:
        out(f"  {form}")
    out("\nViT variants (width / depth / heads / mlp ratio):")
    for name, shape in vit_impl.VARIANTS.items():
        out(f"  {name + '/<patch>':<10} {shape.embed_dim:>5} {shape.depth:>3} {shape.num_heads:>3} "
            f"{shape.mlp_ratio:>4}")
    out("\ntasks (kind: throughput cells run alone on a device, accuracy cells may share it):")
    out(describe_tasks())
    out("\nsuites:")
    for path in sorted(SUITES_DIR.glob("*.yaml")):
        out(f"  {path.relative_to(SUITES_DIR.parent)}")
    out("\nsuite settings:")
    out(describe_settings())
    out("\nsuite grid axes:")
    out(describe_axes())
    return 0


def _cmd_report(args) -> int:
    from .report import write_report

    from .paths import RunPaths

    run_dirs = [Path(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else RunPaths(run_dirs[0]).report_dir
    Output()(f"report: {write_report(run_dirs, out)}")
    return 0


def _cmd_compare(args) -> int:
    from .compare import compare, csv_table, format_table, parse_thresholds

    fail_above = parse_thresholds(args.fail_above) if args.fail_above is not None else None
    result = compare(Path(args.run_a), Path(args.run_b), fail_above=fail_above,
                     allow_different_devices=args.allow_different_devices, metrics=args.metrics,
                     include_noisy=args.include_noisy)
    out = Output()
    out(format_table(result))
    if args.out:
        csv_table(result).to_csv(args.out, index=False)
        out(f"table: {args.out}")
    return 1 if len(result.failures) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m bench", description="ViT vs CNN benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a suite (resumable with --run-dir)")
    run.add_argument("suite", help="suite YAML file, e.g. suites/scaling.yaml")
    run.add_argument("--run-dir", help="results folder; an existing one is resumed (default results/<suite>/<time>)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the suite's device")
    run.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    run.add_argument("--retry-failed", action="store_true", help="when resuming, run failed cells again")
    run.add_argument("--allow-mixed-versions", action="store_true",
                     help="resume a run dir started with another code version or environment (torch, timm, triton, "
                          "CUDA, driver, device, CPU, Python; each row records its own)")
    run.add_argument("--max-cells", type=_positive_int, default=2000, metavar="N",
                     help="refuse a grid of more than N cells (default 2000)")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local: processes on this machine; ray: Ray tasks on a cluster (pip install vitbench[ray])")
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
    cmp = sub.add_parser("compare", help="run B against run A: per-setting ratios, noise, regressions")
    cmp.add_argument("run_a", metavar="RUN_A")
    cmp.add_argument("run_b", metavar="RUN_B")
    cmp.add_argument("--fail-above", metavar="R",
                     help="exit 1 when a metric got worse by more than R beyond both runs' noise (e.g. 1.1, or per "
                          "metric: throughput:1.1,accuracy:1.02), or a setting stopped being ok")
    cmp.add_argument("--include-noisy", action="store_true",
                     help="count rows whose either side was flagged noisy (busy machine, wide spread) towards "
                          "--fail-above (left out by default; always listed and counted)")
    cmp.add_argument("--metrics", type=lambda t: t.split(","), help="only these metrics, e.g. throughput,peak_memory")
    cmp.add_argument("--allow-different-devices", action="store_true", help="compare runs of different devices")
    cmp.add_argument("--out", help="write the whole comparison as CSV")
    cmp.set_defaults(func=_cmd_compare)
    return parser


def _fail(message: str, code: int) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _unencodable(args) -> str | None:
    """An argument the locale could not decode (Python keeps its bytes as lone surrogates, which no file or record
    can hold as text): a non-ASCII path under an ASCII locale."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and any("\udc80" <= ch <= "\udcff" for ch in text):
                return name
    return None


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="backslashreplace")  # any path prints, whatever the locale
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:  # before any heavy import: a mistyped command answers at once
        return _fail(str(err), 2)
    name = _unencodable(args)
    if name:
        label = f"--{name.replace('_', '-')}" if name in ("run_dir", "out") else name
        return _fail(f"{label} {ascii(getattr(args, name))}: has characters the current locale "
                     f"({sys.getfilesystemencoding()}) cannot represent; use an ASCII name or a UTF-8 locale (e.g. "
                     "LC_ALL=C.UTF-8)", 2)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return _interrupted(signal.SIGINT)
    except Exception as err:
        if os.environ.get("VITBENCH_DEBUG") == "1":
            raise
        return _fail(f"internal error ({type(err).__name__}: {err}); set VITBENCH_DEBUG=1 to see the traceback", 1)


def _interrupted(sig: int) -> int:
    print(f"\ninterrupted ({'Ctrl-C' if sig == signal.SIGINT else f'signal {sig}'}): the running cells were stopped "
          "and not recorded; finished cells are saved: run again with the same --run-dir to resume", file=sys.stderr)
    return 128 + sig


def _dispatch(args) -> int:
    """Run the command; the errors a user can cause are one line and an exit code."""
    from .cell import NO_SPACE
    from .compare import CompareError
    from .executors.process import CellEnvironmentError
    from .executors.ray import RayUnavailable
    from .results import ResultsError
    from .rundir import RunDirError
    from .runner import Stopped
    from .suite import SuiteError

    try:
        return args.func(args)
    except (SuiteError, RunDirError, ResultsError, CompareError, UsageError, RayUnavailable) as err:
        return _fail(str(err), 2)
    except CellEnvironmentError as err:
        return _fail(f"{err}; the run stopped: free space and run again with the same --run-dir to resume", 1)
    except OSError as err:
        if err.errno in NO_SPACE:
            return _fail(f"no space left on the device ({err}); finished cells are saved: free space and run "
                         "again with the same --run-dir to resume", 1)
        return _fail(str(err), 2)
    except Stopped as err:
        return _interrupted(err.signum)


if __name__ == "__main__":
    sys.exit(main())
