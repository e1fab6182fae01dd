"""The sidebar's sweep view in-process (no HTTP, no jupyter server), for a sweep of RUNS runs.

    .venv/bin/python bench/sidebar_view.py ROOT RUNS N [sweep-first]

ROOT is the tree to import ipython_energy from (this one, or a copy of an older commit with this
file's tests/server/layout_data.py copied in).  Writes the sweep with ``bulk_sweep`` (3 hosts x
2 processes, the last run RUNNING), warms up as the server does, reads the experiment view
(as the sidebar's poll does first; ``sweep-first``: not), times the first ``SidebarState.sweep``
call, waits for a big sweep's background read, then N rounds of: a ``live_energy_j`` update of
the running run, ``SidebarState.experiment`` (timed apart), ``SidebarState.sweep`` handing back
``version`` as ``since`` where the tree has one.  Prints p50 / p95 (``json.dumps`` included),
bytes per reply and the load average.
"""
import json, os, statistics, sys, tempfile, time
root, runs, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sweep_first = sys.argv[4:] == ["sweep-first"]
sys.path[:0] = [root, os.path.join(root, "tests", "server")]
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from layout_data import bulk_sweep, experiment_id
from ipython_energy.server.handlers import EnergySidebar, SidebarState
work = tempfile.mkdtemp(prefix="scale-inproc-")
uri = f"sqlite:///{work}/mlflow.db"
client = MlflowClient(tracking_uri=uri)
sweep = bulk_sweep(client, experiment_id(client, "bench"), "s", runs, hosts=3, processes_per_host=2)
st = SidebarState(EnergySidebar(tracking_uri=uri, experiment="bench"), work)
st.warm_up()
src = st.sources()[0]
if not sweep_first:
    st.experiment(src.id)
t0 = time.perf_counter(); rep = st.sweep(src.id, sweep.run_id); first = time.perf_counter() - t0
first_bytes = len(json.dumps(rep))
while rep.get("loading"):
    time.sleep(0.5); rep = st.sweep(src.id, sweep.run_id)
times, sizes, exp_times, version = [], [], [], rep.get("version")
for i in range(n):
    now = int(time.time() * 1000)
    client.log_batch(sweep.children[-1], metrics=[Metric("live_energy_j", 10.0 * (i + 1), now, i + 1)])
    t0 = time.perf_counter()
    json.dumps(st.experiment(src.id))
    exp_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    rep = st.sweep(src.id, sweep.run_id, version) if version else st.sweep(src.id, sweep.run_id)
    body = json.dumps(rep, separators=(",", ":"))
    times.append(time.perf_counter() - t0)
    sizes.append(len(body)); version = rep.get("version")
q = lambda v, p: sorted(v)[min(len(v) - 1, round(p * (len(v) - 1)))]
print(f"{root} runs={runs}: first {first*1000:.0f} ms ({first_bytes} B{', no experiment view before' if sweep_first else ''}); "
      f"p50 {statistics.median(times)*1000:.1f} ms, p95 {q(times, .95)*1000:.1f} ms (incl. json.dumps); "
      f"bytes median {statistics.median(sizes):.0f}; experiment view p50 {statistics.median(exp_times)*1000:.1f} ms, "
      f"p95 {q(exp_times, .95)*1000:.1f} ms; load {os.getloadavg()[0]:.1f}")
