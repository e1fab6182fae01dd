"""`make demo`'s script, end to end: examples/run_sweep.py runs examples/sweep.ipynb in a real
kernel on a fresh sqlite store and prints both sweeps, the rebound verdict and the A/B verdict.

No hardware is faked: the kernel measures with whatever this machine has (the CPU estimate here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_demo_prints_both_sweeps_the_rebound_verdict_and_the_ab_verdict(tmp_path):
    env = dict(os.environ, IPYTHON_ENERGY_HOME=str(tmp_path / "home"), PYTHONPATH=os.pathsep.join(sys.path),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", DEMO_STAMP="test")
    env.pop("IPYTHON_ENERGY_SENSORS", None)
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "run_sweep.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    lines = out.splitlines()
    assert any(line.startswith("sweep 'baseline-test': ") and " over 7 runs " in line for line in lines), out
    assert any(line.startswith("sweep 'lean-test': ") and " over 30 runs " in line for line in lines), out
    verdict = next(line for line in lines if line.startswith("rebound: "))
    assert "'lean-test' vs 'baseline-test'" in verdict or verdict.startswith("rebound: none"), verdict
    ab = next(line for line in lines if line.startswith("A/B: "))
    assert "early-stop" in ab and "full" in ab and "95 % CI" in ab, ab
    assert "Where to look:" in out and "jupyter lab" in out and "mlflow ui" in out
