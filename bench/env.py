"""The environment record (env.json), the code version, and the per-row environment columns."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATHSPEC = ":(exclude)results"  # run dirs appear under results/ while a suite runs: not code


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - an absent or broken package is recorded, not fatal
        return "unavailable"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                          timeout=60).stdout


@functools.cache
def code_version() -> tuple[str, bool]:
    """(version, dirty): the git sha, plus '+dirty.<8 hex>' hashing the uncommitted changes (tracked diff and
    untracked files, results/ excluded), so two different dirty trees get different versions."""
    try:
        sha = _git("rev-parse", "HEAD").strip()
        diff = _git("diff", "HEAD", "--binary", "--", ".", RESULTS_PATHSPEC)
        untracked = _git("ls-files", "--others", "--exclude-standard", "-z", "--", ".", RESULTS_PATHSPEC)
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"vitbench-{version('vitbench')}", False
        except PackageNotFoundError:
            return "unknown", False
    digest = hashlib.sha1(diff.encode())
    for name in sorted(filter(None, untracked.split("\0"))):
        digest.update(name.encode())
        try:
            digest.update((REPO_ROOT / name).read_bytes())
        except OSError:
            pass
    dirty = bool(diff or untracked.strip("\0"))
    return (f"{sha}+dirty.{digest.hexdigest()[:8]}" if dirty else sha), dirty


@functools.cache
def gpu_name() -> str:
    """The GPU's name, read with nvidia-smi so that the runner process never creates a CUDA context (cells
    get a clean one); "" without a GPU."""
    if not torch.cuda.is_available():
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, check=True, timeout=30).stdout
        return out.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return torch.cuda.get_device_name()


@functools.cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def nvidia_driver() -> str | None:
    """The NVIDIA driver's version (nvidia-smi), None without one."""
    if not torch.cuda.is_available():
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return out.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


# What a run dir's cells must share to be one measurement: resuming with any of these changed is refused.
ENVIRONMENT_KEYS = ("python", "torch", "timm", "triton", "cuda", "nvidia_driver", "device_name", "cpu")


def device_name(device: str) -> str:
    return gpu_name() if device == "cuda" else cpu_name()


# fp32 matmuls and convolutions on CUDA run as TF32 in every cell (what timm's and most published benchmarks
# use); the fp32 MFU peak (bench/measure/flops.py) is the TF32 tensor-core peak accordingly.
TF32 = True


def apply_matmul_policy() -> dict:
    """Set the fp32 matmul/convolution policy in this process and return it as recorded in env.json."""
    torch.backends.cuda.matmul.allow_tf32 = TF32
    torch.backends.cudnn.allow_tf32 = TF32
    return {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "fp32_peak": "tf32" if TF32 else "fp32"}


def row_environment(device: str) -> dict:
    """The environment columns of every result row."""
    version, dirty = code_version()
    return {
        "code_version": version,
        "git_sha": version.split("+")[0] + ("-dirty" if dirty else ""),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "triton": _version("triton"),
        "gpu": gpu_name() if device == "cuda" else "",
        "device_name": device_name(device),
        "host": socket.gethostname(),
    }


def collect_env(device: str, command: list[str], suite_text: str) -> dict:
    version, dirty = code_version()
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "triton": _version("triton"),
        "pandas": _version("pandas"),
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "nvidia_driver": nvidia_driver(),
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "matmul_policy": apply_matmul_policy(),
        "code_version": version,
        "git_sha": version.split("+")[0],
        "git_dirty": dirty,
        "command": command,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "suite_text": suite_text,
    }
