"""A real ``jupyter lab`` subprocess (127.0.0.1, token) and Debian's Chromium driven by Python
playwright.  Run this directory in its own pytest invocation, without the playwright plugin:

    .venv/bin/python -m pytest tests/browser -q -p no:playwright

The lab finds the built extension through JUPYTER_PATH (``ipython_energy/labextension``,
made by ``pip install .`` or ``jlpm build:prod``) and the server extension on PYTHONPATH.
MLflow data is logged with the real MLflow client, in the layout of docs/metrics.md
(tests/server/layout_data.py); kernels are represented by their registration files.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.net import free_port
from tests.helpers.registry_files import write_kernel_record

ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "ipython_energy" / "labextension"
CHROMIUM = os.environ.get("IPYTHON_ENERGY_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]



def pytest_collection_modifyitems(config, items):
    """Browser tests share no process with pytest-jupyter's server fixtures (they conflict)."""
    if any("tests/server/" in item.nodeid for item in items):
        skip = pytest.mark.skip(reason="run tests/browser in its own pytest invocation "
                                       "(pytest-jupyter and playwright conflict in one process)")
        for item in items:
            if "tests/browser/" in item.nodeid:
                item.add_marker(skip)


class Lab:
    """One ``jupyter lab`` process with its own data, settings, workspace and energy home."""

    def __init__(self, base: Path, extra_env: dict[str, str] | None = None):
        self.base = base
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.root = base / "root"
        self.home = base / "energy-home"
        self.data = base / "jupyter-data"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        self.root.mkdir(parents=True)
        self.home.mkdir(mode=0o700)
        (self.data / "labextensions").mkdir(parents=True)
        os.symlink(BUILT, self.data / "labextensions" / "ipython-energy")
        user_settings = self.base / "user-settings" / "@jupyterlab" / "apputils-extension"
        user_settings.mkdir(parents=True)
        (user_settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        config_dir = self.base / "jupyter-config"
        config_dir.mkdir()
        (config_dir / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"ipython_energy": True}}}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "IPYTHON_ENERGY_", "JUPYTER"))}
        env.update({"IPYTHON_ENERGY_HOME": str(self.home), "JUPYTER_PATH": str(self.data),
                    "JUPYTER_CONFIG_DIR": str(self.base / "jupyter-config"),
                    "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                    **self.extra_env})
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
               "--port", str(self.port), f"--IdentityProvider.token={self.token}",
               "--ServerApp.allow_unauthenticated_access=False", f"--ServerApp.root_dir={self.root}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               f"--LabApp.workspaces_dir={self.base / 'workspaces'}",
               f"--LabApp.user_settings_dir={self.base / 'user-settings'}"]
        self.log = open(self.base / "lab.log", "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("jupyter lab exited:\n" + (self.base / "lab.log").read_text()[-3000:])
            try:
                req = urllib.request.Request(f"{self.url}/api/status",
                                             headers={"Authorization": f"token {self.token}"})
                with urllib.request.urlopen(req, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        raise RuntimeError("jupyter lab did not come up:\n" + (self.base / "lab.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()

    def register_kernel(self, tracking_uri: str, experiment: str, session: str = "k1",
                        pid: int | None = None) -> None:
        """A registration as ``%load_ext ipython_energy`` writes it (docs/metrics.md)."""
        write_kernel_record(self.home, tracking_uri, experiment, session=session, pid=pid,
                            cwd=str(self.base / "notebooks"))


@pytest.fixture
def lab(tmp_path):
    if not (BUILT / "package.json").is_file():
        pytest.skip("the labextension is not built: run `pip install .` or `jlpm install && jlpm build:prod`")
    lab = Lab(tmp_path)
    lab.start()
    yield lab
    lab.stop()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.problems = problems
    yield page
    context.close()


def open_sidebar(page, lab: Lab):
    """Open JupyterLab and the Energy panel; return the panel locator."""
    page.goto(f"{lab.url}/lab?token={lab.token}")
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    tab = page.locator('.jp-SideBar [data-id="ipython-energy-sidebar"]')
    tab.wait_for(timeout=30_000)
    panel = page.locator("#ipython-energy-sidebar")
    if not panel.is_visible():
        tab.click()
    panel.wait_for(state="visible")
    return panel


def shoot(page, panel, name: str) -> Path:
    """Save the panel and the whole page under test-artifacts/ (and return the panel shot)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}-page.png"))
    path = ARTIFACTS / f"{name}.png"
    panel.screenshot(path=str(path))
    return path
