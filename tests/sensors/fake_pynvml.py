"""A fake ``pynvml`` module for driving the real NVML backend without a GPU.

Only the hardware seam is fake: the functions and error type below mirror the names,
units (mW, mJ) and failure mode (``NVMLError`` carrying an error code) of
``nvidia-ml-py``'s ``pynvml``; the backend code that calls them is the real one.
Tests inject the module with ``monkeypatch.setitem(sys.modules, "pynvml", fake)``.
"""

from __future__ import annotations

import hashlib
import math
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


_CHUNK = bytes(1 << 16)


def burn_cpu_s(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time in a busy loop (a driver call that computes).

    The loop hashes a buffer: hashlib releases the GIL for large inputs, so other threads run
    meanwhile, as they do during a real NVML call (ctypes releases the GIL)."""
    if seconds <= 0:
        return
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        hashlib.sha256(_CHUNK)


@dataclass
class FakeGpu:
    """One fake GPU.

    By default its energy counter is fresh (it moves on every read) and reading it is free.
    ``counter_period_s`` makes the counter change only every that many seconds (at phase
    ``counter_phase_s``), as the H100's does every 100 ms; ``counter_cost_s`` makes every read of
    the counter burn that much CPU time on the calling thread, as the H100's driver does (~3 ms).
    ``energy_j_at`` / ``power_w_at`` (functions of seconds since ``t0``) replace the constant
    ``power_w`` with a load that changes; ``energy_j_at`` must be the integral of ``power_w_at``.
    ``hold_counter`` freezes the counter at its current value (a driver that stops publishing
    updates for a while); when cleared, the counter reads its true value again.
    ``util_pct`` (a constant) or ``util_at`` (per cent, a function of seconds since ``t0``) give
    ``nvmlDeviceGetUtilizationRates(...).gpu``: as NVML's, the share of the last
    ``util_sample_s`` (1/6 s) in which a kernel ran, i.e. the mean of ``util_at`` over it; with
    neither, the call raises Not Supported.  ``util_cost_s`` is its cost, as ``counter_cost_s``.
    ``counter_reads``, ``power_reads`` and ``util_reads`` count the calls.  ``spend`` is how a read's cost is
    spent: CPU time burnt on the calling thread by default; a test on an injected clock passes the
    clock's ``advance``, so that a read takes that long on the clock.
    """

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
    counter_period_s: float = 0.0
    counter_phase_s: float = 0.0
    counter_cost_s: float = 0.0
    energy_j_at: Callable[[float], float] | None = None
    power_w_at: Callable[[float], float] | None = None
    hold_counter: bool = False
    counter_reads: int = 0
    power_reads: int = 0
    util_pct: float | None = None
    util_at: Callable[[float], float] | None = None
    util_sample_s: float = 1.0 / 6.0
    util_cost_s: float = 0.0
    util_reads: int = 0
    spend: Callable[[float], None] | None = None
    _held_mj: int | None = None

    def true_energy_j(self, x: float) -> float:
        """Exact cumulative energy at ``x`` seconds after ``t0`` (the truth for tests)."""
        return self.energy_j_at(x) if self.energy_j_at is not None else x * self.power_w

    def energy_mj(self) -> int:
        x = self.clock() - self.t0
        p = self.counter_period_s
        if p > 0:
            ph = self.counter_phase_s
            x = max(0.0, ph + math.floor((x - ph) / p) * p)
        value = int(self.true_energy_j(x) * 1000)
        if self.hold_counter:
            if self._held_mj is None:
                self._held_mj = value
            return self._held_mj
        self._held_mj = None
        return value

    def util_percent(self) -> int:
        """``nvmlUtilization_t.gpu``: the mean of ``util_at`` over the last ``util_sample_s``, whole per cent."""
        if self.util_at is None:
            return int(round(self.util_pct or 0.0))
        x = self.clock() - self.t0
        n = 32
        w = self.util_sample_s
        return int(round(sum(self.util_at(x - w + (i + 0.5) * w / n) for i in range(n)) / n))

    def power_mw(self) -> int:
        if self.power_w_at is not None:
            return int(self.power_w_at(self.clock() - self.t0) * 1000)
        return int(self.power_w * 1000)


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
        g.counter_reads += 1
        if g.counter_cost_s > 0:
            (g.spend or burn_cpu_s)(g.counter_cost_s)
        return g.energy_mj()

    def nvmlDeviceGetPowerUsage(h):
        g = _gpu(h)
        g.power_reads += 1
        return g.power_mw()

    def nvmlDeviceGetUtilizationRates(h):
        g = _gpu(h)
        if g.util_pct is None and g.util_at is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        g.util_reads += 1
        if g.util_cost_s > 0:
            (g.spend or burn_cpu_s)(g.util_cost_s)
        return types.SimpleNamespace(gpu=g.util_percent(), memory=0)  # c_nvmlUtilization_t's fields

    nv.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION = 83
    nv.NVML_FI_DEV_POWER_AVERAGE = 185
    nv.NVML_FI_DEV_POWER_INSTANT = 186
    nv.NVML_FI_DEV_ENERGY = 191
    nv.NVML_TOTAL_POWER_SAMPLES = 0
    nv.NVML_GPU_UTILIZATION_SAMPLES = 1

    def nvmlDeviceGetFieldValues(h, field_ids):
        """As ``pynvml``'s: one value per field id (``nvmlReturn`` 3, Not Supported, for the others);
        the energy fields are the counter (``ullVal``, mJ), the power fields ``uiVal`` (mW)."""
        g = _gpu(h)
        now_us = int(g.clock() * 1e6)
        out = []
        for fid in field_ids:
            value = types.SimpleNamespace(dVal=0.0, uiVal=0, ulVal=0, ullVal=0, sllVal=0, siVal=0, usVal=0)
            v = types.SimpleNamespace(fieldId=fid, scopeId=0, timestamp=now_us, latencyUsec=0, valueType=3,
                                      nvmlReturn=0, value=value)
            if fid == 83 and g.has_counter:
                g.counter_reads += 1
                if g.counter_cost_s > 0:
                    (g.spend or burn_cpu_s)(g.counter_cost_s)
                value.ullVal = g.energy_mj()
            elif fid in (185, 186):
                g.power_reads += 1
                v.valueType, value.uiVal = 1, g.power_mw()
            else:
                v.nvmlReturn = NVML_ERROR_NOT_SUPPORTED
            out.append(v)
        return out

    def nvmlDeviceGetSamples(h, sampling_type, last_seen_us):
        """As ``pynvml``'s: ``(value_type, samples)``, the samples newer than ``last_seen_us``; the
        fake keeps one sample, the current one (power in mW, utilisation in per cent)."""
        g = _gpu(h)
        now_us = int(g.clock() * 1e6)
        if now_us <= last_seen_us:
            return 1, []
        value = g.power_mw() if sampling_type == 0 else g.util_percent()
        return 1, [types.SimpleNamespace(timeStamp=now_us, sampleValue=types.SimpleNamespace(uiVal=value))]

    nv.nvmlDeviceGetFieldValues = nvmlDeviceGetFieldValues
    nv.nvmlDeviceGetSamples = nvmlDeviceGetSamples
    nv.nvmlInit = nvmlInit
    nv.nvmlDeviceGetUtilizationRates = nvmlDeviceGetUtilizationRates
    nv.nvmlShutdown = nvmlShutdown
    nv.nvmlDeviceGetCount = nvmlDeviceGetCount
    nv.nvmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByIndex
    nv.nvmlDeviceGetUUID = lambda h: _gpu(h).uuid
    nv.nvmlDeviceGetName = lambda h: _gpu(h).name
    nv.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: _gpu(h).power_limit_mw
    nv.nvmlDeviceGetTotalEnergyConsumption = nvmlDeviceGetTotalEnergyConsumption
    nv.nvmlDeviceGetPowerUsage = nvmlDeviceGetPowerUsage
    nv.nvmlDeviceGetTemperature = lambda h, sensor: _gpu(h).temperature_c
    nv.nvmlDeviceGetArchitecture = lambda h: _gpu(h).arch
    return nv
