"""NVIDIA GPUs through NVML (``pynvml`` from the ``nvidia-ml-py`` package).

One sensor per visible GPU, domain ``gpu<N>`` where ``N`` is the position in
``CUDA_VISIBLE_DEVICES`` (so ``gpu0`` is what CUDA/PyTorch call ``cuda:0``).
Entries of ``CUDA_VISIBLE_DEVICES`` may be NVML indices or (prefixes of) GPU UUIDs.
Note that CUDA orders devices fastest-first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``,
whereas NVML indices follow the PCI bus; set that variable on multi-GPU machines so
that the two numberings agree.

* Volta and newer: ``nvmlDeviceGetTotalEnergyConsumption`` (cumulative mJ, updated
  about every 100 ms) → method ``counter``, ``update_period_s`` 0.1.
* Older GPUs: ``nvmlDeviceGetPowerUsage`` (mW), integrated by the meter → method
  ``polled``; ``averaging_s`` is 1.0 on Ampere and newer (the reading is a ~1 s mean)
  and 0 before.
* Utilisation: ``nvmlDeviceGetUtilizationRates(...).gpu`` (per cent of NVML's own sample
  period, 1/6 s to 1 s, during which a kernel was running), read every
  :data:`UTIL_PERIOD_S` rather than with every energy read, where the GPU supports it.
* A counter GPU is ``slow_when_idle``: its counter read costs ~3 ms of CPU on H100/H200, so the
  sampler reads it at every tick only while a window is open, and at its idle interval otherwise
  (the edges' reads keep every window's energy exact).  A polled GPU is read at every tick always:
  its energy is integrated power, which a lower rate would make less accurate.

``pynvml`` is imported inside the functions, never at module import.  A GPU that
stops answering (``NVMLError`` on read, e.g. "GPU is lost") raises from
:meth:`NvmlSensor.read`; the sampler records a gap for that GPU only.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .base import DomainInfo, DomainReading, SensorBase, SensorError, readings

COUNTER_UPDATE_PERIOD_S = 0.1
POLLED_UPDATE_PERIOD_S = 0.1
#: How often the GPU's utilisation is read (seconds): every other sample at 10 Hz, so that it adds
#: at most half a driver call per sample to the energy read (NVML's utilisation changes only
#: every 1/6 s to 1 s anyway).
UTIL_PERIOD_S = 0.2


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlSensor(SensorBase):
    """One GPU.  Created by :func:`discover_nvml` / :func:`open_nvml`."""

    name = "nvml"
    util_period_s = UTIL_PERIOD_S

    def __init__(self, pynvml: Any, handle: Any, domain: str, info: dict[str, str], counter: bool, averaging_s: float,
                 util: bool = False):
        self._nv = pynvml
        self._handle = handle
        self._counter = counter
        self.slow_when_idle = counter
        if not util:
            self.utilisation = None  # this GPU gives no utilisation: the capability is absent
        self._lock = threading.Lock()
        self._closed = False
        pynvml.nvmlInit()  # NVML reference-counts init/shutdown; close() releases this one
        self._domain = DomainInfo(
            name=domain,
            kind="gpu",
            method="counter" if counter else "polled",
            sensor="nvml",
            update_period_s=COUNTER_UPDATE_PERIOD_S if counter else POLLED_UPDATE_PERIOD_S,
            averaging_s=0.0 if counter else averaging_s,
            details=info,
        )

    def domains(self) -> list[DomainInfo]:
        return [self._domain]

    def read(self) -> dict[str, DomainReading]:
        """Read energy (counter GPUs) and power.  Raises ``pynvml.NVMLError`` if the GPU is gone."""
        return readings(self.domains(), self.read_values())

    def read_values(self) -> tuple[tuple[float | None, float]]:
        """``((energy_j, power_w),)``, as :meth:`read`."""
        nv = self._nv
        energy_j = None
        if self._counter:
            energy_j = nv.nvmlDeviceGetTotalEnergyConsumption(self._handle) * 1e-3
        power_w = nv.nvmlDeviceGetPowerUsage(self._handle) * 1e-3
        return ((energy_j, power_w),)

    def utilisation(self) -> tuple[float]:
        """``(busy_fraction,)``: the share of NVML's last sample period (1/6 s to 1 s) in which a
        kernel was running on the GPU.  Raises ``pynvml.NVMLError`` (the sampler then has no reading)."""
        return (self._nv.nvmlDeviceGetUtilizationRates(self._handle).gpu * 1e-2,)

    def state(self) -> dict[str, str]:
        nv = self._nv
        try:
            temp = nv.nvmlDeviceGetTemperature(self._handle, nv.NVML_TEMPERATURE_GPU)
        except nv.NVMLError as exc:
            return {"temperature_error": str(exc)}
        return {"temperature_c": str(temp)}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._nv.nvmlShutdown()
        except self._nv.NVMLError:
            pass  # already shut down by someone else: nothing left to release


def _visible(nv: Any, count: int) -> tuple[list[tuple[int, Any]], list[str]]:
    """Resolve ``CUDA_VISIBLE_DEVICES`` to ``[(nvml_index, handle)]`` in CUDA order."""
    notes: list[str] = []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [(i, nv.nvmlDeviceGetHandleByIndex(i)) for i in range(count)], notes
    tokens = [t.strip() for t in env.split(",")]
    if env.strip() == "":
        return [], ["NVML: CUDA_VISIBLE_DEVICES is empty: no GPU is visible to this process"]
    uuids: list[tuple[int, str, Any]] = []
    for i in range(count):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        uuids.append((i, _text(nv.nvmlDeviceGetUUID(h)), h))
    out: list[tuple[int, Any]] = []
    for tok in tokens:
        if tok.isdigit() or (tok.startswith("-") and tok[1:].isdigit()):
            idx = int(tok)
            if not 0 <= idx < count:
                notes.append(f"NVML: CUDA_VISIBLE_DEVICES entry {tok!r} is not a GPU index; later entries ignored (as CUDA does)")
                break
            out.append((idx, uuids[idx][2]))
            continue
        if tok.startswith("MIG-"):
            notes.append(f"NVML: MIG device {tok!r} is not measured (NVML reports energy per physical GPU)")
            continue
        want = tok if tok.startswith("GPU-") else f"GPU-{tok}"
        match = [u for u in uuids if u[1].startswith(want)]
        if len(match) != 1:
            notes.append(f"NVML: CUDA_VISIBLE_DEVICES entry {tok!r} matches {len(match)} GPUs; later entries ignored (as CUDA does)")
            break
        out.append((match[0][0], match[0][2]))
    return out, notes


def _open(explicit: bool) -> tuple[list[NvmlSensor], list[str]]:
    try:
        import pynvml as nv  # lazy: only when GPUs are asked for
    except ImportError as exc:
        msg = f"NVML: pynvml is not importable ({exc}); install nvidia-ml-py"
        if explicit:
            raise SensorError(msg) from exc
        return [], [msg]
    try:
        nv.nvmlInit()
    except nv.NVMLError as exc:
        msg = f"NVML: no NVIDIA driver or GPU ({exc})"
        if explicit:
            raise SensorError(msg) from exc
        return [], [msg]
    sensors: list[NvmlSensor] = []
    try:
        count = nv.nvmlDeviceGetCount()
        visible, notes = _visible(nv, count)
        try:
            driver = _text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError:
            driver = "unknown"
        for n, (idx, h) in enumerate(visible):
            info = {"model": _text(nv.nvmlDeviceGetName(h)), "driver": driver, "nvml_index": str(idx)}
            try:
                info["uuid"] = _text(nv.nvmlDeviceGetUUID(h))
            except nv.NVMLError:
                pass
            try:
                info["power_limit_w"] = f"{nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000:g}"
            except nv.NVMLError:
                pass
            try:
                nv.nvmlDeviceGetTotalEnergyConsumption(h)
                counter = True
            except nv.NVMLError:
                counter = False
            averaging_s = 0.0
            if not counter:
                try:
                    arch = nv.nvmlDeviceGetArchitecture(h)
                    ampere_plus = arch >= nv.NVML_DEVICE_ARCH_AMPERE and arch != nv.NVML_DEVICE_ARCH_UNKNOWN
                except nv.NVMLError:
                    ampere_plus = False
                averaging_s = 1.0 if ampere_plus else 0.0
                notes.append(
                    f"NVML: gpu{n} ({info['model']}) has no energy counter; its power is polled and integrated"
                )
            info["energy_api"] = (
                "nvmlDeviceGetTotalEnergyConsumption" if counter else "nvmlDeviceGetPowerUsage"
            )
            try:
                nv.nvmlDeviceGetUtilizationRates(h)
                util = True
                info["util_api"] = "nvmlDeviceGetUtilizationRates"
            except (nv.NVMLError, AttributeError):
                util = False
            sensors.append(NvmlSensor(nv, h, f"gpu{n}", info, counter, averaging_s, util))
    except nv.NVMLError as exc:
        for s in sensors:
            s.close()
        msg = f"NVML: enumerating GPUs failed ({exc})"
        if explicit:
            raise SensorError(msg) from exc
        return [], [msg]
    finally:
        nv.nvmlShutdown()  # each sensor holds its own nvmlInit reference
    if explicit and not sensors:
        raise SensorError("NVML: no GPU visible to this process" + (f" ({'; '.join(notes)})" if notes else ""))
    return sensors, notes


def discover_nvml() -> tuple[list[NvmlSensor], list[str]]:
    """One sensor per visible GPU; never raises.  Returns ``(sensors, notes)``."""
    return _open(explicit=False)


def open_nvml() -> list[NvmlSensor]:
    """Like :func:`discover_nvml` but raises :class:`SensorError` when no GPU can be measured."""
    return _open(explicit=True)[0]
