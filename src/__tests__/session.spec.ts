import { formatSeconds } from '../format';
import { ISession } from '../types';
import { sessionParts } from '../views/session';

/** A session as `GET poll` returns it from a live file; `figures` overrides the numbers. */
function session(figures: Partial<ISession>): ISession {
  return {
    session: 'k1',
    power_w: 120,
    total_j: null,
    cells_j: null,
    between_cells_j: null,
    duration_s: 10,
    estimated: false,
    methods: {},
    experiment: 'exp',
    active_run: null,
    active_sweep: null,
    updated_at: 0,
    age_s: 0,
    stale: false,
    ...figures
  };
}

describe('sessionParts', () => {
  it('shows the three parts of a kernel of this version, shares adding up to 100', () => {
    const parts = sessionParts(
      session({
        total_j: 1200,
        in_runs_j: 600,
        other_cells_j: 300,
        idle_j: 300,
        in_runs_s: 5,
        other_cells_s: 2.5,
        idle_s: 2.5,
        // what it also writes for sidebars of the previous version
        cells_j: 600,
        between_cells_j: 600
      })
    );
    expect(parts.map(p => [p.key, p.label, p.joules, p.seconds])).toEqual([
      ['Cells', 'runs & measured cells', 600, 5],
      ['Other', 'other cells', 300, 2.5],
      ['Idle', 'idle', 300, 2.5]
    ]);
    expect(parts.map(p => p.share)).toEqual([50, 25, 25]);
  });

  it('falls back to the two figures a kernel of the previous version wrote', () => {
    const parts = sessionParts(session({ total_j: 109, cells_j: 0, between_cells_j: 109 }));
    expect(parts.map(p => [p.key, p.label, p.joules, p.seconds, p.share])).toEqual([
      ['Cells', 'cells', 0, null, 0],
      ['Idle', 'idle between cells', 109, null, 100]
    ]);
  });

  it('a new session (all parts 0) draws an empty bar', () => {
    const parts = sessionParts(session({ total_j: 0, in_runs_j: 0, other_cells_j: 0, idle_j: 0 }));
    expect(parts.map(p => p.share)).toEqual([0, 0, 0]);
    expect(parts.map(p => p.seconds)).toEqual([null, null, null]);
  });

  it('a part the file lacks counts as 0', () => {
    const parts = sessionParts(session({ in_runs_j: 10, other_cells_j: null }));
    expect(parts.map(p => p.joules)).toEqual([10, 0, 0]);
    expect(parts.map(p => p.share)).toEqual([100, 0, 0]);
  });
});

describe('formatSeconds', () => {
  it('writes durations', () => {
    expect(formatSeconds(8.46)).toBe('8.5 s');
    expect(formatSeconds(42.4)).toBe('42 s');
    expect(formatSeconds(720)).toBe('12 min');
    expect(formatSeconds(3.5 * 3600 * 4)).toBe('14.0 h');
    expect(formatSeconds(null)).toBe('–');
  });
});
