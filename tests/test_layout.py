"""Provenance tags of the MLflow layout (docs/metrics.md), from Measurements as the meter builds them."""

from __future__ import annotations

from ipython_energy.layout import provenance_tags
from ipython_energy.measurement import DomainProvenance, Measurement
from ipython_energy.sensors.cpu_model import CpuModelSensor


def measurement(prov: dict[str, DomainProvenance]) -> Measurement:
    domains = {name: 10.0 for name in prov}
    return Measurement(label="cell", energy_j=10.0 * len(prov), duration_s=1.0, power_mean_w=10.0 * len(prov),
                       power_peak_w=12.0, domains=domains, idle_j=0.0, net_j=10.0 * len(prov),
                       provenance=prov, started_at=0.0)


def test_cpu_estimate_is_described_and_never_taken_for_a_gpu_model():
    info = CpuModelSensor().domains()[0]  # the real sensor's details
    prov = {"cpu": DomainProvenance(method="estimated", sensor="cpu-model", interval_s=0.1,
                                    update_period_s=0.0, details=dict(info.details))}
    tags = provenance_tags(measurement(prov), idle_source="none")
    assert "energy.gpu_model" not in tags and "energy.gpu_driver" not in tags
    assert tags["energy.estimated"] == "true"
    model = tags["energy.estimate_model"]
    assert model.startswith("cpu: n_cpus*idle_w + busy_cpus*(active_w-idle_w)")
    assert f"n_cpus={info.details['n_cpus']}" in model and "idle_w_per_cpu=" in model


def test_gpu_model_and_driver_come_from_nvml_domains_only():
    gpu = {"model": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "power_limit_w": "700"}
    prov = {
        "gpu0": DomainProvenance(method="counter", sensor="nvml", interval_s=0.1, update_period_s=0.1, details=gpu),
        "package0": DomainProvenance(method="counter", sensor="rapl", interval_s=0.1, update_period_s=0.0,
                                     details={"model": "some RAPL zone detail"}),
    }
    tags = provenance_tags(measurement(prov), idle_source="measured")
    assert tags["energy.gpu_model"] == "NVIDIA H100 80GB HBM3"
    assert tags["energy.gpu_driver"] == "580.159.04"
    assert "energy.estimate_model" not in tags and tags["energy.estimated"] == "false"
