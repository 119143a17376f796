"""Energy of a timed region on an NVIDIA GPU, from the driver's total-energy counter (NVML, package
nvidia-ml-py): `with GpuEnergy() as energy: ...` -> energy.joules, or None where NVML or the counter is
absent (no GPU, another vendor, pre-Volta), in which case no energy metric is written."""

from __future__ import annotations

import os


def _handle():
    import pynvml
    import torch

    pynvml.nvmlInit()
    uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    return pynvml.nvmlDeviceGetHandleByIndex(int(visible) if visible.isdigit() else 0)


class GpuEnergy:
    def __init__(self):
        self.joules: float | None = None
        try:
            import pynvml

            self._nvml = pynvml
            self._device = _handle()
            self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._device)
        except Exception:  # noqa: BLE001 - no NVML, no GPU, or no counter: the metric is simply not written
            self._device = None

    def __enter__(self) -> "GpuEnergy":
        if self._device is not None:
            self._start = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._device)  # millijoules
        return self

    def __exit__(self, *exc) -> None:
        if self._device is not None and exc[0] is None:
            self.joules = (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._device) - self._start) / 1e3
