"""The sweep and experiment charts: one definition, Vega-Lite v5 via altair 5.

Used by the JupyterLab sidebar (the server sends :func:`sweep_spec`), by
``%energy chart`` (which returns :func:`sweep_chart`) and by the sweep's MLflow artifact
``energy_sweep.html`` (:func:`sweep_html`).  All take the dict that
:func:`ipython_energy.rollup.build_sweep_data` returns (``query.SourceReader.sweep_data``
returns the same).

altair is pinned ``<6``: altair 6 emits Vega-Lite 6, which JupyterLab 4.6's built-in
renderer (vega-lite 5.6, mime ``application/vnd.vegalite.v5+json``) does not render.
See docs/sidebar.md.

Names (sweep, run, param) only ever travel as data values or text; the HTML artifact
escapes ``<``, ``>`` and ``&`` inside its embedded JSON so a run called
``</script><script>…`` stays text.
"""

from __future__ import annotations

import functools
import html
import json
from typing import Any, Mapping

from .measurement import format_energy
from .sweep_window import hosts as host_breakdown
from .sweep_window import window

VEGALITE_MIME = "application/vnd.vegalite.v5+json"

#: The colour of a bin of older runs (their mean J/run; min to max as a rule).
BIN_COLOR = "#9db8dd"

#: Run status -> colour; the same four everywhere (bars, legend, sidebar list).
STATUS_COLORS = {
    "running": "#e8a317",
    "finished": "#3a7bd5",
    "failed": "#d64545",
    "killed": "#8a8f98",
}

_PROVENANCE_ORDER = ("methods", "sensors", "coverage", "estimated", "interval_s", "short_window",
                     "idle_source", "gaps", "start_temperature_c", "gpu_model", "host")


def _params_text(params: Mapping[str, Any], limit: int = 400) -> str:
    text = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _provenance_text(prov: Mapping[str, Any]) -> str:
    keys = [k for k in _PROVENANCE_ORDER if prov.get(k) not in (None, "")]
    keys += sorted(k for k in prov if k not in _PROVENANCE_ORDER and prov.get(k) not in (None, ""))
    return "; ".join(f"{k}={prov[k]}" for k in keys)


def chart_rows(sweep_data: Mapping[str, Any], memo: dict | None = None, *,
               recent: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The chart's datasets: ``runs`` (one row per recent run), ``bins`` (older runs, binned:
    see :func:`ipython_energy.sweep_window.window`), ``forecast`` and ``budget``.

    ``recent`` runs are shown one by one (default ``sweep_window.RECENT_RUNS``); a sweep with
    no more than that has no bins.  ``sweep_data["earlier"]`` (runs not read yet) becomes a
    bin of its own.

    ``memo`` (any dict the caller keeps between calls for the same sweep) remembers each
    run's params / provenance text while the run's ``params`` and ``provenance`` objects
    stay the same ones, which :class:`ipython_energy.query.SourceReader` guarantees for
    runs that did not change.  The memo holds those objects, so identity is meaningful.
    """
    kept, bins = window(sweep_data["runs"], earlier=sweep_data.get("earlier"), memo=memo,
                        **({"recent": recent} if recent is not None else {}))
    runs = []
    for run in kept:
        params, prov = run.get("params") or {}, run.get("provenance") or {}
        hit = memo.get(run.get("run_id")) if memo is not None else None
        if hit is not None and hit[0] is params and hit[1] is prov:
            params_text, prov_text = hit[2], hit[3]
        else:
            params_text, prov_text = _params_text(params), _provenance_text(prov)
            if memo is not None and run.get("run_id"):
                memo[run["run_id"]] = (params, prov, params_text, prov_text)
        runs.append({
            "index": run["index"],
            "name": str(run.get("name", "")),
            "status": "running" if run.get("live") else run.get("status", "finished"),
            "energy_j": run.get("energy_j"),
            "cumulative_j": run.get("cumulative_j"),
            "duration_s": run.get("duration_s"),
            # the part of the bar spent at low utilisation (None: no domain reported utilisation)
            "low_util_j": low_util_j(run),
            "low_util_label": low_util_label(run),
            "host": run.get("host") or prov.get("host") or "unknown",
            "params": params_text,
            "provenance": prov_text,
        })
    totals = sweep_data["totals"]
    forecast = []
    planned, fc = totals.get("planned"), totals.get("forecast_energy_j")
    last = runs[-1] if runs else ({**bins[-1], "index": bins[-1]["last"]} if bins else None)
    if planned and fc is not None and last and planned > last["index"]:
        forecast = [
            {"index": last["index"], "cumulative_j": last["cumulative_j"], "label": "now"},
            {"index": planned, "cumulative_j": fc, "label": f"forecast {format_energy(fc)} for {planned} runs"},
        ]
    budget = []
    if totals.get("budget_j") is not None:
        budget = [{"budget_j": totals["budget_j"], "label": f"budget {format_energy(totals['budget_j'])}"}]
    return {"runs": runs, "bins": bins, "forecast": forecast, "budget": budget}


def low_util_j(run: Mapping[str, Any]) -> float | None:
    """A run's energy at low utilisation as its bar shows it: the final figure of a run that ended
    (a running run has none yet), never more than the bar."""
    low, energy = run.get("energy_low_util_j"), run.get("energy_j")
    if low is None or energy is None or run.get("live"):
        return None
    return min(max(0.0, low), energy)


def low_util_label(run: Mapping[str, Any]) -> str | None:
    """``1.2 kJ (41 %) at < 30 % utilisation``: the lighter part of the run's bar, for its tooltip."""
    low, energy = low_util_j(run), run.get("energy_j")
    if low is None:
        return None
    share = f" ({round(100 * low / energy)} %)" if energy else ""
    threshold = run.get("low_util_threshold")
    below = f"< {threshold:g} % utilisation" if threshold is not None else "low utilisation"
    return f"{format_energy(low)}{share} at {below}"


@functools.lru_cache(maxsize=64)
def _sweep_skeleton(title: str, width: Any, height: int, color_by: str = "status"):
    """The chart without data: layers read the named datasets ``runs``, ``bins``, ``forecast``,
    ``budget``.  ``color_by`` is ``status`` or ``host`` (the bars' colour)."""
    import altair as alt

    x = alt.X("x0:Q", title="run (in order)", axis=alt.Axis(tickMinStep=1, format="d"),
              scale=alt.Scale(nice=False, zero=False))
    # two columns: four in a row do not fit the sidebar's default width
    legend = alt.Legend(orient="bottom", direction="horizontal", columns=2, symbolSize=60,
                        labelFontSize=10, columnPadding=10, symbolType="square")
    if color_by == "host":
        color = alt.Color("host:N", title=None, legend=legend)
    else:
        color = alt.Color("status:N", title=None, legend=legend,
                          scale=alt.Scale(domain=list(STATUS_COLORS), range=list(STATUS_COLORS.values())))
    tooltip = [
        alt.Tooltip("index:Q", title="run #"),
        alt.Tooltip("name:N", title="run"),
        alt.Tooltip("status:N", title="status"),
        alt.Tooltip("energy_j:Q", title="energy (J)", format=",.4~s"),
        alt.Tooltip("cumulative_j:Q", title="sweep total so far (J)", format=",.4~s"),
        alt.Tooltip("duration_s:Q", title="duration (s)", format=".1f"),
        alt.Tooltip("low_util_label:N", title="energy at low utilisation"),
        alt.Tooltip("host:N", title="host"),
        alt.Tooltip("params:N", title="params"),
        alt.Tooltip("provenance:N", title="provenance"),
    ]
    # x and x2 make each bar exactly one run wide; y2 = 0 keeps it a vertical bar from zero
    bars = alt.Chart(alt.NamedData("runs")).transform_calculate(
        x0="datum.index - 0.42", x1="datum.index + 0.42").mark_bar().encode(
        x=x, x2="x1:Q", y2=alt.datum(0),
        y=alt.Y("energy_j:Q", title="energy per run (J)", axis=alt.Axis(format="~s", titleColor="#3a7bd5")),
        color=color, tooltip=tooltip)
    # the part of each bar spent at low utilisation: the same bar from zero to low_util_j, lightened
    # by a white overlay (so it keeps its status colour); runs without the figure draw nothing
    low = alt.Chart(alt.NamedData("runs"), name="lowutil").transform_filter(
        "isValid(datum.low_util_j) && datum.low_util_j > 0").transform_calculate(
        x0="datum.index - 0.42", x1="datum.index + 0.42").mark_bar(color="white", opacity=0.55).encode(
        x=x, x2="x1:Q", y2=alt.datum(0), y=alt.Y("low_util_j:Q", title="energy per run (J)"), tooltip=tooltip)
    total_y = alt.Y("cumulative_j:Q", title="sweep total (J)",
                    axis=alt.Axis(format="~s", orient="right", titleColor="#1b1f24"))
    line = alt.Chart(alt.NamedData("runs")).mark_line(color="#1b1f24", strokeWidth=2
                                                       ).encode(x=alt.X("index:Q"), y=total_y)
    points = alt.Chart(alt.NamedData("runs")).mark_point(color="#1b1f24", filled=True, size=18).encode(
        x=alt.X("index:Q"), y=total_y, tooltip=tooltip)
    forecast = alt.Chart(alt.NamedData("forecast")).mark_line(
        color="#1b1f24", strokeDash=[5, 4], strokeWidth=1.5).encode(x=alt.X("index:Q"), y=total_y,
                                                                      tooltip=[alt.Tooltip("label:N", title="")])
    budget = alt.Chart(alt.NamedData("budget")).mark_rule(color="#d64545", strokeDash=[2, 2], strokeWidth=1.5
                                                          ).encode(y=alt.Y("budget_j:Q"),
                                                                   tooltip=[alt.Tooltip("label:N", title="")])
    budget_text = alt.Chart(alt.NamedData("budget")).mark_text(
        align="left", baseline="bottom", dx=3, dy=-2, color="#d64545", fontSize=10).encode(
        y=alt.Y("budget_j:Q"), x=alt.value(0), text="label:N")
    # older runs, binned: a bar at the bin's mean J/run with a rule from its min to its max, and
    # the rising total at each bin's end
    bin_tip = [alt.Tooltip("label:N", title="older runs")]
    bin_x = alt.X("x0:Q", title="run (in order)")
    binned = alt.Chart(alt.NamedData("bins"), name="binned").transform_calculate(
        x0="datum.first - 0.42", x1="datum.last + 0.42").mark_bar(color=BIN_COLOR).encode(
        x=bin_x, x2="x1:Q", y2=alt.datum(0), y=alt.Y("mean_j:Q", title="energy per run (J)"), tooltip=bin_tip)
    spread = alt.Chart(alt.NamedData("bins")).transform_filter("isValid(datum.min_j)").transform_calculate(
        mid="(datum.first + datum.last) / 2").mark_rule(color="#5b6f8c").encode(
        x=alt.X("mid:Q"), y=alt.Y("min_j:Q", title="energy per run (J)"), y2="max_j:Q", tooltip=bin_tip)
    bin_line = alt.Chart(alt.NamedData("bins")).mark_line(color="#1b1f24", strokeWidth=2).encode(
        x=alt.X("last:Q"), y=total_y)
    totals = alt.layer(bin_line, line, points, forecast, budget, budget_text)
    chart = alt.layer(alt.layer(binned, spread, bars, low), totals).resolve_scale(y="independent").properties(
        width=width, height=height)
    if title:
        chart = chart.properties(title=alt.TitleParams(title, anchor="start", fontSize=12))
    return chart


def sweep_chart(sweep_data: Mapping[str, Any], *, width: int | str = 520, height: int = 240,
                title: bool = True, color_by: str = "auto", per_host: bool | str = "auto"):
    """The sweep as an altair chart (Vega-Lite v5).

    A bar per run in run order (``energy_j``; the live value while a run is open), coloured
    by status (running / finished / failed / killed); the sweep's cumulative total as a rising
    line on the right axis; the forecast to the planned number of runs (dashed) and the
    budget (red rule) when the sweep has them.  Hover shows a run's params and provenance.
    Beyond the last ``sweep_window.RECENT_RUNS`` runs, older runs are drawn binned (mean J/run,
    min to max).  ``color_by="host"`` colours the bars by the run's host instead of its status;
    ``"auto"`` (the default) does so when the sweep's runs come from more than one host.
    ``per_host`` adds a panel below with the energy per host (its runs and processes in the
    tooltip); ``"auto"`` adds it when the runs come from more than one host.

    ``sweep_data`` is what ``rollup.build_sweep_data`` / ``SourceReader.sweep_data`` return.
    ``width="container"`` fills the surrounding element (the sidebar uses it).

    For an HTML file use :func:`sweep_html` (offline-safe, escaped), not ``chart.save``.
    """
    name = str(sweep_data["sweep"].get("name", "")) if title else ""
    hosts = sweep_data.get("hosts") or host_breakdown(sweep_data["runs"])
    if color_by == "auto":
        color_by = "host" if len(hosts) > 1 else "status"
    chart = _sweep_skeleton(name, width, height, color_by)
    if per_host == "auto":
        per_host = len(hosts) > 1
    if per_host:
        import altair as alt

        chart = alt.vconcat(chart, host_chart(hosts, width=width, colored=color_by == "host"))
    return chart.properties(datasets=chart_rows(sweep_data))


def host_chart(hosts: list[Mapping[str, Any]], *, width: int | str = 520, colored: bool = True):
    """Energy per host (``sweep_window.hosts``): a horizontal bar each, most energy first, coloured
    as the sweep chart colours its bars by host when ``colored``."""
    import altair as alt

    rows = [{"host": h["host"], "energy_j": h["energy_j"], "runs": h["runs"], "processes": h["processes"],
             "label": f"{format_energy(h['energy_j'])} · {h['runs']} run(s) · {h['processes']} process(es)"}
            for h in hosts]
    y = alt.Y("host:N", sort="-x", title=None, axis=alt.Axis(labelLimit=160))
    x = alt.X("energy_j:Q", title="energy per host (J)", axis=alt.Axis(format="~s"))
    color = alt.Color("host:N", legend=None) if colored else alt.value("#3a7bd5")
    tooltip = [alt.Tooltip("host:N"), alt.Tooltip("energy_j:Q", title="energy (J)", format=",.4~s"),
               alt.Tooltip("runs:Q"), alt.Tooltip("processes:Q")]
    bars = alt.Chart(alt.Data(values=rows)).mark_bar().encode(x=x, y=y, color=color, tooltip=tooltip)
    text = alt.Chart(alt.Data(values=rows)).mark_text(align="left", dx=4, fontSize=10, color="#1b1f24").encode(
        x=x, y=y, text="label:N")
    return alt.layer(bars, text).properties(width=width, height=max(18 * len(rows), 40))


def sweep_spec(sweep_data: Mapping[str, Any], *, width: int | str = "container", height: int = 220,
               title: bool = False, memo: dict | None = None) -> dict[str, Any]:
    """The Vega-Lite v5 spec of :func:`sweep_chart` as a dict, built fast.

    The spec without data is made once per (title, width, height) and cached; only the
    datasets change from poll to poll, so a 1,000-run sweep costs no schema validation.
    """
    name = str(sweep_data["sweep"].get("name", "")) if title else ""
    spec = skeleton_dict(name, width, height)
    return {**spec, "datasets": chart_rows(sweep_data, memo)}


@functools.lru_cache(maxsize=64)
def skeleton_dict(title: str = "", width: Any = "container", height: int = 220) -> dict[str, Any]:
    """The sweep chart's Vega-Lite spec without its datasets (cached: treat as read-only)."""
    return _sweep_skeleton(title, width, height).to_dict()


def _rebound_note(sweep: Mapping[str, Any]) -> str:
    """The side-by-side chart's tooltip on a sweep: its rebound, or the apparent one inside the noise."""
    if sweep.get("rebound"):
        return f"{sweep['rebound']['label']} vs {sweep['rebound']['vs_name']}"
    if sweep.get("within_noise"):
        return f"none beyond noise: {sweep['within_noise']['label']} vs {sweep['within_noise']['vs_name']}"
    return ""


def experiment_chart(experiment_data: Mapping[str, Any], *, width: int | str = 520, height: int = 110):
    """Sweeps side by side: mean J/run above, total J below; rebounding sweeps in red."""
    import altair as alt

    rows = []
    for position, s in enumerate(experiment_data["sweeps"], start=1):
        rows.append({
            "sweep": f"{position}. {s['name']}" if len(s["name"]) <= 24 else f"{position}. {s['name'][:23]}\u2026",
            "order": position,
            "mean_j": s.get("mean_energy_per_run_j"),
            "total_j": s.get("energy_j"),
            "runs": s.get("runs"),
            "rebound": "rebound" if s.get("rebound") else "no rebound",
            "note": _rebound_note(s),
        })
    x = alt.X("sweep:N", sort=alt.EncodingSortField("order"), title=None, axis=alt.Axis(labelLimit=120))
    color = alt.Color("rebound:N", scale=alt.Scale(domain=["no rebound", "rebound"], range=["#3a7bd5", "#d64545"]),
                      legend=alt.Legend(orient="bottom", title=None))
    tooltip = [alt.Tooltip("sweep:N"), alt.Tooltip("runs:Q"),
               alt.Tooltip("mean_j:Q", title="mean J/run", format=",.4~s"),
               alt.Tooltip("total_j:Q", title="total J", format=",.4~s"), alt.Tooltip("note:N", title="rebound")]
    base = alt.Chart(alt.Data(values=rows)).mark_bar().encode(x=x, color=color, tooltip=tooltip)
    mean = base.encode(y=alt.Y("mean_j:Q", title="mean J/run", axis=alt.Axis(format="~s"))).properties(
        width=width, height=height)
    total = base.encode(y=alt.Y("total_j:Q", title="total J", axis=alt.Axis(format="~s"))).properties(
        width=width, height=height)
    return alt.vconcat(mean, total)


def experiment_spec(experiment_data: Mapping[str, Any], *, width: int | str = "container") -> dict[str, Any]:
    """:func:`experiment_chart` as a Vega-Lite v5 dict (the sidebar's experiment view)."""
    return experiment_chart(experiment_data, width=width).to_dict(validate=False)


# ---------------------------------------------------------------------------------------
# the MLflow artifact
# ---------------------------------------------------------------------------------------
_VEGA_CDN = (
    "https://cdn.jsdelivr.net/npm/vega@5",
    "https://cdn.jsdelivr.net/npm/vega-lite@5.20.1",
    "https://cdn.jsdelivr.net/npm/vega-embed@6",
)


def script_safe_json(value: Any) -> str:
    """JSON that cannot end a ``<script>`` element or open a comment inside it."""
    text = json.dumps(value, allow_nan=False, default=str)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _inline_bundle() -> str | None:
    """vega + vega-lite + vega-embed as one script, from vl-convert-python if installed."""
    try:
        import vl_convert
    except ImportError:
        return None
    from altair.vegalite import SCHEMA_VERSION  # "v5.20.1" -> vl-convert's "v5_20"

    return vl_convert.javascript_bundle(vl_version="_".join(SCHEMA_VERSION.split(".")[:2]))


def sweep_html(sweep_data: Mapping[str, Any], *, inline: bool | None = None) -> str:
    """A self-describing HTML page of the sweep: the chart, and its numbers as a table.

    The Vega-Lite spec is embedded as escaped JSON.  With ``vl-convert-python`` installed
    (or ``inline=True``) vega itself is inlined and the page draws offline; otherwise it
    loads vega from a CDN, and where that is unreachable the table below still gives every
    number.  All names are HTML-escaped; none is ever parsed as markup or script.
    """
    spec = sweep_chart(sweep_data).to_dict(validate=False)
    bundle = _inline_bundle() if inline is not False else None
    if inline and bundle is None:
        raise RuntimeError("sweep_html(inline=True) needs vl-convert-python (pip install vl-convert-python)")
    sweep, totals = sweep_data["sweep"], sweep_data["totals"]
    esc = html.escape
    head_rows = [
        ("runs", f"{totals['runs']} ({totals['ended_runs']} ended, {totals['running_runs']} running)"),
        ("total energy", format_energy(totals["energy_j"])),
        ("mean per ended run", format_energy(totals.get("mean_energy_per_run_j"))),
    ]
    if totals.get("planned"):
        head_rows.append(("forecast", f"{format_energy(totals.get('forecast_energy_j'))} for {totals['planned']} runs"))
    if totals.get("budget_j") is not None:
        state = "OVER" if totals["over_budget"] else "within"
        head_rows.append(("budget", f"{format_energy(totals['budget_j'])} ({state})"))
    if totals.get("estimated"):
        head_rows.append(("note", "some numbers are estimated (no hardware counter)"))
    summary = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in head_rows)
    run_rows = "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in (
            r["index"], r.get("name", ""), r.get("status", ""), format_energy(r.get("energy_j")),
            format_energy(r.get("cumulative_j")), _params_text(r.get("params") or {}),
            _provenance_text(r.get("provenance") or {}))) + "</tr>"
        for r in sweep_data["runs"])
    if bundle is not None:
        safe_bundle = bundle.replace("</script", "<\\/script")
        scripts = f"<script>{safe_bundle}</script>"
    else:
        scripts = "".join(f'<script src="{u}"></script>' for u in _VEGA_CDN)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8">
<title>{esc(str(sweep.get('name', '')))} – ipython-energy sweep</title>
<style>body{{font-family:system-ui,sans-serif;margin:16px;color:#1b1f24}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}}
#chart-note{{color:#666;font-size:12px}}</style>
{scripts}
</head><body>
<h2>{esc(str(sweep.get('name', '')))}</h2>
<table>{summary}</table>
<div id="chart"></div>
<p id="chart-note"></p>
<script type="application/json" id="energy-spec">{script_safe_json(spec)}</script>
<script>
(function () {{
  var spec = JSON.parse(document.getElementById("energy-spec").textContent);
  var note = document.getElementById("chart-note");
  if (typeof window.vegaEmbed !== "function") {{
    note.textContent = "The chart needs vega (loaded from a CDN, unreachable here); the numbers are in the table below.";
    return;
  }}
  window.vegaEmbed("#chart", spec, {{actions: false}}).catch(function (err) {{ note.textContent = String(err); }});
}})();
</script>
<h3>Runs</h3>
<table><tr><th>#</th><th>run</th><th>status</th><th>energy</th><th>sweep total</th><th>params</th><th>provenance</th></tr>
{run_rows}</table>
</body></html>
"""


def save_sweep_html(sweep_data: Mapping[str, Any], path: str, **kwargs: Any) -> None:
    """Write :func:`sweep_html` to ``path`` (UTF-8)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(sweep_html(sweep_data, **kwargs))
