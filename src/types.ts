/**
 * Shapes of the /ipython-energy/api/ responses (see ipython_energy/server/handlers.py
 * and ipython_energy/query.py, which compute everything; the sidebar only draws).
 */

export type RunStatus = 'running' | 'finished' | 'failed' | 'killed';

export interface ISource {
  id: string;
  tracking_uri: string;
  experiment: string;
  origin: 'config' | 'kernel' | 'environment' | 'server-root';
  live_sessions: number;
  exists: boolean;
  /** Set when the store could not be read just now (the others are still shown). */
  error?: string;
}

export interface IExperimentsReply {
  sources: ISource[];
  hint: string;
}

/** The two changes of a rebound with their intervals (sweeps with repeats; docs/comparing.md). */
export interface IReboundInterval {
  level: number;
  /** Over measured runs (warm-ups out); a fraction, -0.31 is 31 % less. */
  mean_change: number;
  mean_change_ci: [number, number];
  mean_df: number | null;
  total_change: number;
  total_change_ci: [number, number];
  total_df: number | null;
  /** Both changes lie outside their intervals: the flag fires. */
  outside: boolean;
}

export interface IRebound {
  run_id: string;
  name: string;
  vs_run_id: string;
  vs_name: string;
  mean_energy_per_run_j: number;
  vs_mean_energy_per_run_j: number;
  energy_j: number;
  vs_energy_j: number;
  mean_change: number;
  total_change: number;
  /** Null where either sweep has no repeats (then `note` says "no repeats: no interval"). */
  interval: IReboundInterval | null;
  note: string;
  label: string;
}

export interface ISweepSummary {
  run_id: string;
  name: string;
  status: RunStatus;
  start_time_ms: number | null;
  runs: number;
  planned: number | null;
  energy_j: number;
  mean_energy_per_run_j: number | null;
  budget_j: number | null;
  budget_state: string | null;
  rebound: IRebound | null;
  /** An apparent rebound that run-to-run noise explains (its interval holds no change). */
  within_noise: IRebound | null;
}

export interface IExperimentReply {
  source: ISource;
  experiment: { id: string; name: string };
  sweeps: ISweepSummary[];
  rebounds: IRebound[];
  within_noise: IRebound[];
  chart: any | null;
}

export interface ITotals {
  runs: number;
  running_runs: number;
  ended_runs: number;
  ended_energy_j: number;
  /** Its two parts: inside runs (overlapping runs counted once) and between them (older servers: absent). */
  runs_energy_j?: number;
  between_runs_energy_j?: number;
  /** Runs that ran at the same time as another run of the sweep on the same devices. */
  overlapping_runs?: number;
  energy_j: number;
  mean_energy_per_run_j: number | null;
  planned: number | null;
  forecast_energy_j: number | null;
  budget_j: number | null;
  budget_used: number | null;
  over_budget: boolean;
  estimated: boolean;
  /** How many hosts, and processes on them, logged the sweep's runs (older servers: absent). */
  hosts?: number;
  processes?: number;
}

/** One host's part of a sweep: its runs, their energy, the processes that logged them. */
export interface IHostLine {
  host: string;
  runs: number;
  energy_j: number;
  processes: number;
}

/**
 * What changed in a sweep's chart since the version the request handed back (`since`):
 * keep the runs with `first <= index <= last`, replace those that come again in `runs`;
 * `bins` absent: unchanged.
 */
export interface IChartDelta {
  base: string;
  first: number;
  last: number;
  runs: { index: number; [key: string]: any }[];
  bins?: any[];
  forecast: any[];
  budget: any[];
}

export interface IRunLine {
  index: number;
  run_id: string;
  name: string;
  status: RunStatus;
  energy_j: number | null;
  live: boolean;
  /** Energy at low utilisation (`energy_low_util_j`); null when no domain reported utilisation. */
  energy_low_util_j?: number | null;
  /** The threshold in per cent (`energy.low_util_threshold`), null when unknown. */
  low_util_threshold?: number | null;
}

export interface ISweepReply {
  source: ISource;
  sweep: {
    run_id: string;
    name: string;
    status: RunStatus;
    planned: number | null;
    budget_j: number | null;
  };
  totals: ITotals;
  latest_run: IRunLine | null;
  /** The whole chart; null when the reply carries a `delta` instead. */
  chart: any;
  /** Energy per host, most first (older servers: absent). */
  hosts?: IHostLine[];
  /** True while a big sweep's older runs are still being read. */
  loading?: boolean;
  /** This reply's version: hand it back as `since` to get only what changed. */
  version?: string;
  /** With `since`: what changed, to merge into the chart of that version. */
  delta?: IChartDelta;
}

export interface ISession {
  session: string;
  power_w: number | null;
  total_j: number | null;
  /** The session's three parts (they add up to total_j); null from a kernel of the previous version. */
  in_runs_j?: number | null;
  other_cells_j?: number | null;
  idle_j?: number | null;
  in_runs_s?: number | null;
  other_cells_s?: number | null;
  idle_s?: number | null;
  /** What a kernel of the previous version wrote: measured cells, and the rest. */
  cells_j: number | null;
  between_cells_j: number | null;
  duration_s: number | null;
  estimated: boolean;
  methods: { [domain: string]: string };
  experiment: string | null;
  active_run: { name: string; energy_j: number | null } | null;
  active_sweep: { name: string; total_j: number | null; runs: number | null } | null;
  updated_at: number;
  age_s: number;
  stale: boolean;
}

export interface ISessionReply {
  sessions: ISession[];
}

/**
 * `GET poll?source=&sweep=`: one sidebar poll. The listing, the session and, for the
 * selected source, the experiment and the selected sweep, each as its own route returns it.
 */
export interface IPollReply extends IExperimentsReply {
  session: ISessionReply;
  /** What this reply shows: the source and sweep picked, or followed when none was picked. */
  selected: { source: string | null; sweep: string | null };
  /** null when no source exists yet (the empty state). */
  experiment: IExperimentReply | null;
  /** null when the experiment has no sweep. */
  sweep: ISweepReply | null;
  /** Why the selected store could not be read (listing and session are still current). */
  unavailable?: string;
}
