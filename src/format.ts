/**
 * How the sidebar writes numbers: three significant digits with an SI prefix, and '–'
 * where there is no value (null, undefined, NaN or infinite).
 */

const NO_VALUE = '–';

function missing(value: number | null | undefined): value is null | undefined {
  return value === null || value === undefined || !isFinite(value);
}

/** Joules: `950 J`, `1.23 kJ`, `4.56 MJ`, `7.89 GJ`. */
export function formatEnergy(joules: number | null | undefined): string {
  if (missing(joules)) {
    return NO_VALUE;
  }
  const units: [number, string][] = [
    [1e9, 'GJ'],
    [1e6, 'MJ'],
    [1e3, 'kJ']
  ];
  for (const [factor, unit] of units) {
    if (Math.abs(joules) >= factor) {
      return `${(joules / factor).toPrecision(3)} ${unit}`;
    }
  }
  return `${joules.toPrecision(3)} J`;
}

/** Watts: `12.5 W`, `1.20 kW`. */
export function formatPower(watts: number | null | undefined): string {
  if (missing(watts)) {
    return NO_VALUE;
  }
  return watts >= 1000 ? `${(watts / 1000).toPrecision(3)} kW` : `${watts.toPrecision(3)} W`;
}

/**
 * A run's energy at low utilisation: `1.20 kJ (41%) at < 30% utilisation`, or null when the
 * run has no such figure (its sensors report no utilisation, or it is still running).
 */
export function formatLowUtil(
  lowJ: number | null | undefined,
  energyJ: number | null | undefined,
  thresholdPct: number | null | undefined
): string | null {
  if (missing(lowJ)) {
    return null;
  }
  const share =
    !missing(energyJ) && energyJ > 0
      ? ` (${Math.round((Math.min(lowJ, energyJ) / energyJ) * 100)}%)`
      : '';
  const below = missing(thresholdPct) ? 'low utilisation' : `< ${thresholdPct}% utilisation`;
  return `${formatEnergy(lowJ)}${share} at ${below}`;
}

/** A change as a signed whole percent: 0.2 → `+20%`, -0.58 → `−58%` (a true minus sign). */
export function formatPercent(fraction: number): string {
  const pct = Math.round(fraction * 100);
  return pct >= 0 ? `+${pct}%` : `−${-pct}%`;
}

/** An interval of changes: (-0.38, -0.24) → `−38…−24%`. */
export function formatInterval(low: number, high: number): string {
  return `${formatPercent(low).slice(0, -1)}…${formatPercent(high)}`;
}

/**
 * A rebound's two changes with their intervals, for its card and its row:
 * `J/run −31% (95% CI −38…−24%), total +52% (95% CI +40…+64%)`; without repeats the
 * plain changes and the record's note (`J/run −58%, total +110%; no repeats: no interval`).
 */
export function formatReboundChanges(r: {
  mean_change: number;
  total_change: number;
  note: string;
  interval: {
    level: number;
    mean_change: number;
    mean_change_ci: [number, number];
    total_change: number;
    total_change_ci: [number, number];
  } | null;
}): string {
  const i = r.interval;
  if (!i) {
    const plain = `J/run ${formatPercent(r.mean_change)}, total ${formatPercent(r.total_change)}`;
    return r.note ? `${plain}; ${r.note}` : plain;
  }
  const ci = `${Math.round(i.level * 100)}% CI`;
  return (
    `J/run ${formatPercent(i.mean_change)} (${ci} ${formatInterval(...i.mean_change_ci)}), ` +
    `total ${formatPercent(i.total_change)} (${ci} ${formatInterval(...i.total_change_ci)})`
  );
}

/** Seconds as a duration: `8.5 s`, `42 s`, `12 min`, `3.5 h`. */
export function formatSeconds(seconds: number | null | undefined): string {
  if (missing(seconds)) {
    return NO_VALUE;
  }
  if (seconds < 10) {
    return `${seconds.toFixed(1)} s`;
  }
  if (seconds < 600) {
    return `${Math.round(seconds)} s`;
  }
  if (seconds < 36000) {
    return `${Math.round(seconds / 60)} min`;
  }
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** The totals a sweep card shows before its forecast and budget, as [value, label, css class]. */
export function sweepStats(t: {
  energy_j: number;
  runs: number;
  running_runs: number;
  planned: number | null;
  mean_energy_per_run_j: number | null;
  between_runs_energy_j?: number;
  overlapping_runs?: number;
}): [string, string, string][] {
  const out: [string, string, string][] = [
    [formatEnergy(t.energy_j), 'total so far', 'jp-EnergyPanel-totalStat'],
    [
      t.running_runs ? `${t.runs} (${t.running_runs} live)` : String(t.runs),
      t.planned ? `runs of ${t.planned}` : 'runs',
      ''
    ],
    [formatEnergy(t.mean_energy_per_run_j), 'mean per run', '']
  ];
  if (t.between_runs_energy_j) {
    // The sweep's time outside its runs is part of what it cost (docs/metrics.md).
    out.push([formatEnergy(t.between_runs_energy_j), 'between runs', '']);
  }
  if (t.overlapping_runs) {
    out.push([
      String(t.overlapping_runs),
      'runs overlapped (machine counted once)',
      'jp-EnergyPanel-overlap'
    ]);
  }
  return out;
}
