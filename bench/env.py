"""The environment record (env.json) and the per-row version columns."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - an absent or broken package is recorded, not fatal
        return "unavailable"


@functools.cache
def git_state() -> tuple[str, bool]:
    """(sha, dirty) of the checkout the code runs from; ('unknown', False) outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True).stdout
        return sha, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


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


def device_name(device: str) -> str:
    return gpu_name() if device == "cuda" else cpu_name()


@functools.cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def row_versions(device: str) -> dict:
    """The columns every result row carries."""
    sha, dirty = git_state()
    return {
        "git_sha": sha + ("-dirty" if dirty else ""),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "triton": _version("triton"),
        "gpu": gpu_name() if device == "cuda" else "",
    }


def collect_env(device: str, command: list[str], suite_text: str) -> dict:
    sha, dirty = git_state()
    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "triton": _version("triton"),
        "pandas": _version("pandas"),
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "git_sha": sha,
        "git_dirty": dirty,
        "command": command,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "suite_text": suite_text,
    }
