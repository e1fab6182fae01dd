"""Host facts recorded as provenance tags (computed in the writer thread, never on a cell's path)."""

from __future__ import annotations

import platform
import socket
import sys
from importlib import metadata

#: Libraries whose versions change energy for the same code, recorded when installed.
KEY_LIBRARIES = ("ipython_energy", "mlflow", "torch", "tensorflow", "jax", "scikit-learn", "numpy", "nvidia-ml-py")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> str:
    found = []
    for name in KEY_LIBRARIES:
        try:
            found.append(f"{name}={metadata.version(name.replace('_', '-'))}")
        except metadata.PackageNotFoundError:
            continue
    return ",".join(found)


def host_tags() -> dict[str, str]:
    return {
        "energy.host": socket.gethostname(),
        "energy.cpu_model": cpu_model(),
        "energy.python": platform.python_version(),
        "energy.versions": library_versions(),
        "energy.platform": f"{platform.system()} {platform.release()} {sys.platform}",
    }
