"""Ray Tune trials measured on their workers (ipython_energy.ray_tune), on a local Ray cluster.

Hardware seam: the worker processes read a fake ``pynvml`` (tests/sensors/fake_pynvml.py) with two
GPUs of different models and power (100 W and 250 W), installed in each worker before the trial
starts; the real NVML sensor picks the GPU from the ``CUDA_VISIBLE_DEVICES`` that Ray sets for the
trial.  Ray (a local cluster on 127.0.0.1), the tracker, the writer and MLflow's sqlite store are
real, read back with the MLflow client.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from ipython_energy.ray_tune import measure, report  # noqa: E402
from tests.helpers.mlflow_readback import assert_sweep_total_exact, runs, split_sweep  # noqa: E402

#: The fake node's GPUs, by NVML index: (model, watts).
GPUS = (("Fake GPU A", 100.0), ("Fake GPU B", 250.0))


def on_fake_gpus(trainable):
    """``trainable`` in a worker whose NVML is the fake one (the hardware seam), installed before
    the wrapped trainable makes the worker's tracker."""
    def trial(config):
        from tests.sensors.fake_pynvml import FakeGpu, make_fake_pynvml

        if not getattr(sys.modules.get("pynvml"), "gpus", None):
            sys.modules["pynvml"] = make_fake_pynvml([
                FakeGpu(uuid=f"GPU-{i}{i}{i}{i}0000-0000", name=name, power_w=watts)
                for i, (name, watts) in enumerate(GPUS)])
        return trainable(config)

    return trial


def train(config):
    """A trial that holds its GPU for ``config["seconds"]`` and reports which GPU it was given."""
    time.sleep(config["seconds"])
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    report({"gpus": gpus})  # an intermediate result (with the running energy)
    return {"score": config["seconds"], "gpus": gpus}  # the last result: Tune keeps this one


@pytest.fixture
def local_ray(energy_home, sqlite_uri):
    """A local Ray cluster on 127.0.0.1 (2 CPUs, 2 GPUs declared: the fake node's), whose workers
    log to the test's store and join the sweep ``tune-grid`` through the environment.

    Ray 2.60's raylet gives its agent processes about 15 s to start, then aborts ("Timed out waiting
    for file .../metrics_agent"): on a machine loaded far beyond its cores the cluster may not start."""
    # Ray's socket paths must fit in 107 bytes: a short folder of its own, not the test's tmp_path.
    temp = tempfile.mkdtemp(prefix="ray-")
    env_vars = {"IPYTHON_ENERGY_HOME": str(energy_home), "IPYTHON_ENERGY_SENSORS": "nvml",
                "IPYTHON_ENERGY_SWEEP": "tune-grid", "MLFLOW_TRACKING_URI": sqlite_uri,
                "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": os.pathsep.join(sys.path)}
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=temp, runtime_env={"env_vars": env_vars})
    yield sqlite_uri
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_each_tune_trial_is_a_child_run_measured_on_the_gpu_ray_gave_it(local_ray, tmp_path):
    tuner = tune.Tuner(
        tune.with_resources(on_fake_gpus(measure(train)), {"cpu": 1, "gpu": 1}),
        param_space={"seconds": tune.grid_search([0.3, 0.4, 0.5, 0.6])},
        run_config=tune.RunConfig(name="grid", storage_path=str(tmp_path / "results"), verbose=0))
    results = tuner.fit()
    assert not results.errors, results.errors
    assert len(results) == 4

    client, found = runs(local_ray)
    (parent,), children = split_sweep(found)
    assert parent.data.tags["energy.sweep"] == "tune-grid"  # IPYTHON_ENERGY_SWEEP, not Tune's "grid"
    by_trial = {c.data.tags["ray.trial_id"]: c for c in children}
    assert len(by_trial) == len(children) == 4
    for result in results:
        run = by_trial[result.metrics["trial_id"]]
        assert run.data.tags["ray.experiment"] == "grid"
        assert run.info.run_name == run.data.tags["ray.trial_name"]
        assert run.data.params == {"seconds": str(result.config["seconds"])}
        assert run.info.status == "FINISHED"
        # The trial's last result carries the energy MLflow holds for its run.
        assert result.metrics["energy_j"] == run.data.metrics["energy_j"]
        assert result.metrics["energy_estimated"] is False
        # The GPU Ray assigned (CUDA_VISIBLE_DEVICES) is the one measured, alone.
        (index,) = result.metrics["gpus"].split(",")
        model, watts = GPUS[int(index)]
        assert run.data.tags["energy.gpu_model"] == model
        assert run.data.tags["energy.methods"] == "gpu0=counter"
        assert run.data.metrics["energy_j"] == pytest.approx(watts * run.data.metrics["duration_s"], rel=0.05)
        assert run.data.metrics["duration_s"] >= result.config["seconds"]
    assert {r.metrics["gpus"] for r in results} == {"0", "1"}  # two trials at a time, one GPU each
    assert_sweep_total_exact(client, parent, children)
