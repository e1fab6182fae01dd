import {
  formatEnergy,
  formatInterval,
  formatLowUtil,
  formatPercent,
  formatPower,
  formatReboundChanges,
  sweepStats
} from '../format';

describe('formatEnergy', () => {
  it('writes three significant digits with an SI prefix', () => {
    expect(formatEnergy(0)).toBe('0.00 J');
    expect(formatEnergy(42)).toBe('42.0 J');
    expect(formatEnergy(999)).toBe('999 J');
    expect(formatEnergy(1000)).toBe('1.00 kJ');
    expect(formatEnergy(2160)).toBe('2.16 kJ');
    expect(formatEnergy(4.56e6)).toBe('4.56 MJ');
    expect(formatEnergy(7.891e9)).toBe('7.89 GJ');
    expect(formatEnergy(-1500)).toBe('-1.50 kJ');
  });

  it('writes a dash where there is no value', () => {
    for (const value of [null, undefined, NaN, Infinity, -Infinity]) {
      expect(formatEnergy(value)).toBe('–');
    }
  });
});

describe('formatPower', () => {
  it('writes watts, and kilowatts from 1000 W', () => {
    expect(formatPower(12.5)).toBe('12.5 W');
    expect(formatPower(999)).toBe('999 W');
    expect(formatPower(1200)).toBe('1.20 kW');
    expect(formatPower(null)).toBe('–');
    expect(formatPower(NaN)).toBe('–');
  });
});

describe('formatPercent', () => {
  it('writes a signed whole percent with a true minus sign', () => {
    expect(formatPercent(0.2)).toBe('+20%');
    expect(formatPercent(1.1)).toBe('+110%');
    expect(formatPercent(0)).toBe('+0%');
    expect(formatPercent(-0.58)).toBe('\u221258%');
    expect(formatPercent(-0.004)).toBe('+0%');
  });
});

describe('formatLowUtil', () => {
  it('writes the energy at low utilisation, its share of the run and the threshold', () => {
    expect(formatLowUtil(1230, 3000, 30)).toBe('1.23 kJ (41%) at < 30% utilisation');
    expect(formatLowUtil(0, 3000, 30)).toBe('0.00 J (0%) at < 30% utilisation');
    expect(formatLowUtil(50, 40, 30)).toBe('50.0 J (100%) at < 30% utilisation');
    expect(formatLowUtil(100, 0, 30)).toBe('100 J at < 30% utilisation');
    expect(formatLowUtil(100, 400, null)).toBe('100 J (25%) at low utilisation');
  });

  it('says nothing for a run without the figure (no domain reported utilisation)', () => {
    for (const value of [null, undefined, NaN]) {
      expect(formatLowUtil(value, 3000, 30)).toBeNull();
    }
  });
});

describe('sweepStats', () => {
  const base = {
    energy_j: 900,
    runs: 2,
    running_runs: 0,
    planned: null,
    mean_energy_per_run_j: 450
  };
  it('shows the time between runs and overlapping runs when a sweep has them', () => {
    const stats = sweepStats({ ...base, between_runs_energy_j: 400, overlapping_runs: 2 });
    expect(stats.map(s => s[1])).toEqual([
      'total so far',
      'runs',
      'mean per run',
      'between runs',
      'runs overlapped (machine counted once)'
    ]);
    expect(stats[3][0]).toBe('400 J');
  });
  it('leaves both out for a sweep written by an earlier version', () => {
    expect(sweepStats(base).map(s => s[1])).toEqual(['total so far', 'runs', 'mean per run']);
  });
});

describe('formatReboundChanges', () => {
  const base = { mean_change: -0.58, total_change: 1.1 };

  it('shows both intervals where the sweeps have repeats', () => {
    const interval = {
      level: 0.95,
      mean_change: -0.312,
      mean_change_ci: [-0.38, -0.24] as [number, number],
      total_change: 0.52,
      total_change_ci: [0.4, 0.641] as [number, number]
    };
    expect(
      formatReboundChanges({ ...base, interval, note: 'both changes outside their 95% intervals' })
    ).toBe('J/run −31% (95% CI −38…−24%), total +52% (95% CI +40…+64%)');
  });

  it('says there is no interval without repeats', () => {
    expect(formatReboundChanges({ ...base, interval: null, note: 'no repeats: no interval' })).toBe(
      'J/run −58%, total +110%; no repeats: no interval'
    );
  });

  it('writes an interval that straddles no change with both signs', () => {
    expect(formatInterval(-0.12, 0.05)).toBe('−12…+5%');
  });
});
