"""The ratios the first GPU check is for, against their targets, from a gpu_check run dir:
python tools/gpu_ratios.py RUN_DIR. Ratios come from one run on one device; paired ones from one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.paths import RunPaths
from bench.results import read_results


def median(frame: pd.DataFrame, **where) -> float | None:
    for column, value in where.items():
        frame = frame[frame[column] == value]
    return float(frame["value"].median()) if len(frame) else None


def check(name: str, value: float | None, target: str, ok) -> str:
    if value is None:
        return f"{name:<58} not measured"
    return f"{name:<58} {value:8.3f}   target {target:<8} {'met' if ok(value) else 'MISSED'}"


def main(run_dir: Path) -> int:
    rows = read_results(RunPaths(run_dir).results_csv)
    ok = rows[rows["status"] == "ok"]
    lines = [f"GPU check {run_dir} on {', '.join(sorted(set(ok['device_name'].dropna()))) or '?'}", ""]
    att = ok[ok["task"] == "attention"]
    for shape in sorted(att["attn_shape"].dropna().unique()):
        here = att[att["attn_shape"] == shape]
        ours = median(here, metric="fwd_time", attn_backend="triton")
        sdpa = here[(here["metric"] == "fwd_time") & here["attn_backend"].str.startswith("sdpa")]
        fastest = sdpa.groupby("attn_backend")["value"].median().min() if len(sdpa) else None
        lines.append(check(f"attention {shape} forward: ours / fastest SDPA", ours / fastest if ours and fastest
                           else None, "<= 1.0", lambda r: r <= 1.0))
        ours = median(here, metric="fwd_bwd_time", attn_backend="triton")
        flash = median(here, metric="fwd_bwd_time", attn_backend="sdpa_flash")
        lines.append(check(f"attention {shape} fwd+bwd: ours / SDPA flash", ours / flash if ours and flash else None,
                           "<= 1.0", lambda r: r <= 1.0))
    ratios = ok[ok["metric"] == "throughput_ratio"]
    for task, target in (("infer", 1.05), ("train", 1.0)):
        for against in ("timm:vit_base_patch16_224", "vit:B/16 sdpa")[: 2 if task == "infer" else 1]:
            value = median(ratios, task=task, paired_with=against)
            lines.append(check(f"ViT-B/16 triton {task} throughput / {against} (paired)", value,
                               f">= {target}" if "timm" in against else "(info)",
                               (lambda r, t=target: r >= t) if "timm" in against else (lambda r: True)))
    memory = ok[(ok["metric"] == "peak_memory") & (ok["task"] == "train") & ok["compare_to"].isna()]
    ours, theirs = median(memory, model="vit:B/16"), median(memory, model="timm:vit_base_patch16_224")
    lines.append(check("ViT-B/16 peak training memory: ours / timm", ours / theirs if ours and theirs else None,
                       "<= 1.0", lambda r: r <= 1.0))
    epoch = None  # from the curve of the one Mi/4 train_eval cell (validated once per epoch)
    for cell_id in sorted(set(ok.loc[(ok["task"] == "train_eval") & (ok["model"] == "vit:Mi/4"), "cell_id"])):
        path = RunPaths(run_dir).curve(cell_id)
        curve = json.loads(path.read_text())["curve"] if path.exists() else []
        if len(curve) >= 2:
            epoch = curve[-1]["seconds"] - curve[-2]["seconds"]
    lines.append(check("Fashion-MNIST epoch of ViT Mi/4, data on the GPU (s, 2nd epoch)", epoch, "< 1.0",
                       lambda s: s < 1.0))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
