"""A fake ``pynvml`` module for driving the real NVML backend without a GPU.

Only the hardware seam is fake: the functions and error type below mirror the names,
units (mW, mJ) and failure mode (``NVMLError`` carrying an error code) of
``nvidia-ml-py``'s ``pynvml``; the backend code that calls them is the real one.
Tests inject the module with ``monkeypatch.setitem(sys.modules, "pynvml", fake)``.
"""

from __future__ import annotations

import time
import types
from dataclasses import dataclass, field
from typing import Callable

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_GPU_IS_LOST = 15


class NVMLError(Exception):
    _names = {3: "Not Supported", 9: "Driver Not Loaded", 15: "GPU is lost"}

    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._names.get(self.value, f"NVML Error with code {self.value}")


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    power_w: float = 100.0
    has_counter: bool = True
    arch: int = 9  # NVML_DEVICE_ARCH_HOPPER
    temperature_c: int = 41
    power_limit_mw: int = 700_000
    lost: bool = False
    t0: float = field(default_factory=time.monotonic)
    clock: Callable[[], float] = time.monotonic

    def energy_mj(self) -> int:
        return int((self.clock() - self.t0) * self.power_w * 1000)


def make_fake_pynvml(gpus: list[FakeGpu], *, init_error: int | None = None) -> types.ModuleType:
    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.NVML_TEMPERATURE_GPU = 0
    nv.NVML_DEVICE_ARCH_VOLTA = 5
    nv.NVML_DEVICE_ARCH_TURING = 6
    nv.NVML_DEVICE_ARCH_AMPERE = 7
    nv.NVML_DEVICE_ARCH_HOPPER = 9
    nv.NVML_DEVICE_ARCH_UNKNOWN = 0xFFFFFFFF
    nv.NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST
    nv.init_count = 0
    nv.gpus = gpus

    def nvmlInit():
        if init_error is not None:
            raise NVMLError(init_error)
        nv.init_count += 1

    def nvmlShutdown():
        nv.init_count -= 1

    def _gpu(handle) -> FakeGpu:
        if handle.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return handle

    def nvmlDeviceGetCount():
        return len(gpus)

    def nvmlDeviceGetHandleByIndex(i):
        return gpus[i]

    def nvmlDeviceGetTotalEnergyConsumption(h):
        g = _gpu(h)
        if not g.has_counter:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return g.energy_mj()

    nv.nvmlInit = nvmlInit
    nv.nvmlShutdown = nvmlShutdown
    nv.nvmlDeviceGetCount = nvmlDeviceGetCount
    nv.nvmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByIndex
    nv.nvmlDeviceGetUUID = lambda h: _gpu(h).uuid
    nv.nvmlDeviceGetName = lambda h: _gpu(h).name
    nv.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: _gpu(h).power_limit_mw
    nv.nvmlDeviceGetTotalEnergyConsumption = nvmlDeviceGetTotalEnergyConsumption
    nv.nvmlDeviceGetPowerUsage = lambda h: int(_gpu(h).power_w * 1000)
    nv.nvmlDeviceGetTemperature = lambda h, sensor: _gpu(h).temperature_c
    nv.nvmlDeviceGetArchitecture = lambda h: _gpu(h).arch
    return nv
