import { IQuery } from '../api';
import { mergeSweep, SidebarModel } from '../model';
import { IChartDelta, IPollReply, ISweepReply, ITotals } from '../types';

/** A server reply as `GET poll` gives it; `selected` as the server picked. */
function reply(source: string | null, sweep: string | null): IPollReply {
  return {
    sources: source
      ? [
          {
            id: source,
            tracking_uri: 'sqlite:///x.db',
            experiment: 'exp',
            origin: 'kernel',
            live_sessions: 1,
            exists: true
          }
        ]
      : [],
    hint: 'hint',
    session: { sessions: [] },
    selected: { source, sweep },
    experiment: null,
    sweep: null
  };
}

/** The network seam: records every request and answers with what `answer` returns. */
class FakeServer {
  calls: [string, IQuery][] = [];
  answer: (query: IQuery) => Promise<IPollReply> = query =>
    Promise.resolve(reply(query.source ?? 's1', query.sweep ?? 'r-newest'));

  request = <T>(endpoint: string, query: IQuery = {}): Promise<T> => {
    this.calls.push([endpoint, { ...query }]);
    return this.answer(query) as unknown as Promise<T>;
  };
}

/** Resolves at the model's next `changed`. */
function changed(model: SidebarModel): Promise<void> {
  return new Promise(resolve => {
    const once = () => {
      model.changed.disconnect(once);
      resolve();
    };
    model.changed.connect(once);
  });
}

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

/**
 * Wait until the poll that `scheduled` started has answered and the poll has scheduled its
 * next tick (lumino's `await refresh(); await tick`, then one turn of the event loop: a
 * tick scheduled later would orphan a timer that keeps jest from exiting).
 */
async function answered(model: SidebarModel, scheduled: Promise<void>): Promise<void> {
  await scheduled;
  await model.tick;
  await sleep(1);
}

const pollOnce = (model: SidebarModel) => answered(model, model.refresh());

describe('SidebarModel', () => {
  let server: FakeServer;
  let model: SidebarModel;
  const make = (options: Partial<SidebarModel.IOptions> = {}) =>
    (model = new SidebarModel({ request: server.request, interval_ms: 60_000, ...options }));

  beforeEach(() => {
    server = new FakeServer();
  });

  afterEach(async () => {
    await sleep(10); // let the poll schedule its next tick, so that dispose() clears it
    model?.dispose();
  });

  it('polls once at start, with one request for everything', async () => {
    const first = changed(make());
    await first;
    expect(server.calls).toEqual([['poll', { source: null, sweep: null }]]);
    expect(model.data?.selected).toEqual({ source: 's1', sweep: 'r-newest' });
    expect(model.source).toBe('s1');
    expect(model.sweep).toBe('r-newest');
    expect(model.error).toBeNull();
  });

  it('makes exactly one request and emits once per poll', async () => {
    make({ auto: false });
    let emitted = 0;
    model.changed.connect(() => emitted++);
    for (let i = 1; i <= 3; i++) {
      await pollOnce(model);
      expect(server.calls.length).toBe(i);
      expect(emitted).toBe(i);
    }
    expect(server.calls.every(([endpoint]) => endpoint === 'poll')).toBe(true);
  });

  it('asks for the picked sweep, and drops it when the server no longer lists it', async () => {
    make({ auto: false });
    await answered(model, model.selectSweep('r-old'));
    expect(server.calls[0]).toEqual(['poll', { source: null, sweep: 'r-old' }]);
    expect(model.sweep).toBe('r-old');

    // the sweep was deleted: the server follows the newest again, and so does the model
    server.answer = () => Promise.resolve(reply('s1', 'r-newest'));
    await pollOnce(model);
    expect(model.sweep).toBe('r-newest');
    await pollOnce(model);
    expect(server.calls[2]).toEqual(['poll', { source: null, sweep: null }]);
  });

  it('a new source forgets the picked sweep', async () => {
    make({ auto: false });
    await answered(model, model.selectSweep('r-old'));
    await answered(model, model.selectSource('s2'));
    expect(server.calls[1]).toEqual(['poll', { source: 's2', sweep: null }]);
    expect(model.source).toBe('s2');
  });

  it('keeps the data and reports the error when a poll fails, then recovers', async () => {
    make({ auto: false });
    await pollOnce(model);
    const shown = model.data;

    server.answer = () => Promise.reject(new Error('MLflow is not answering'));
    let emitted = 0;
    model.changed.connect(() => emitted++);
    await pollOnce(model);
    expect(model.error).toBe('MLflow is not answering');
    expect(model.data).toBe(shown);
    expect(emitted).toBe(1);

    server.answer = () => Promise.resolve(reply('s1', 'r2'));
    await pollOnce(model);
    expect(model.error).toBeNull();
    expect(model.sweep).toBe('r2');
  });

  it('while MLflow does not answer, takes the new session and keeps the sweeps shown', async () => {
    make({ auto: false });
    const withSweep = reply('s1', 'r1');
    withSweep.sweep = { chart: null } as unknown as IPollReply['sweep'];
    server.answer = () => Promise.resolve(withSweep);
    await pollOnce(model);

    const down = reply('s1', null);
    down.session = {
      sessions: [{ session: 'k', power_w: 42 }]
    } as unknown as IPollReply['session'];
    down.unavailable = 'MLflow is not answering: connection refused';
    server.answer = () => Promise.resolve(down);
    await pollOnce(model);
    expect(model.error).toBe('MLflow is not answering: connection refused');
    expect(model.data?.session.sessions).toHaveLength(1);
    expect(model.data?.sweep).toBe(withSweep.sweep);
    expect(model.sweep).toBe('r1');
  });

  it('an answer overtaken by a newer request is not shown', async () => {
    make({ auto: false });
    const pending: ((r: IPollReply) => void)[] = [];
    server.answer = () => new Promise(resolve => pending.push(resolve));
    await model.refresh();
    await sleep(20);
    await model.selectSweep('r-clicked');
    await sleep(20);
    expect(server.calls.map(([, q]) => q.sweep)).toEqual([null, 'r-clicked']);
    const next = changed(model);
    pending[1](reply('s1', 'r-clicked'));
    await next;
    pending[0](reply('s1', 'r-newest'));
    await sleep(20);
    expect(model.sweep).toBe('r-clicked');
  });

  it('does not poll while the panel is hidden', async () => {
    let visible = false;
    make({ visible: () => visible });
    await sleep(50);
    await model.refresh();
    await sleep(50);
    expect(server.calls).toEqual([]);
    visible = true;
    const next = changed(model);
    await model.refresh();
    await next;
    expect(server.calls.length).toBe(1);
  });

  it('stops polling when disposed', async () => {
    make({ auto: false, interval_ms: 10 });
    await pollOnce(model);
    model.dispose();
    const count = server.calls.length;
    await sleep(60);
    expect(server.calls.length).toBe(count);
    expect(model.isDisposed).toBe(true);
  });
});

/** A sweep reply carrying the whole chart (runs `first..last`, one bin before them). */
function wholeSweep(version: string, first: number, last: number, energy = 10): ISweepReply {
  const runs = [];
  for (let i = first; i <= last; i++) {
    runs.push({ index: i, name: `run-${i}`, energy_j: energy, status: 'finished' });
  }
  return {
    source: reply('s1', 'r1').sources[0],
    sweep: { run_id: 'r1', name: 'sweep', status: 'running', planned: null, budget_j: null },
    totals: {} as ITotals,
    latest_run: null,
    version,
    chart: {
      mark: 'bar',
      datasets: { runs, bins: [{ first: 1, last: first - 1 }], forecast: [], budget: [] }
    }
  };
}

/** A reply that carries only what changed since `base`. */
function deltaSweep(version: string, delta: Partial<IChartDelta>): ISweepReply {
  const whole = wholeSweep(version, 1, 0);
  return {
    ...whole,
    chart: null,
    delta: { base: 'v1', first: 1, last: 1, runs: [], forecast: [], budget: [], ...delta }
  };
}

describe('mergeSweep', () => {
  it('replaces changed runs, adds new ones, drops those now binned, keeps the rest', () => {
    const before = wholeSweep('v1', 5, 9);
    const merged = mergeSweep(
      before,
      deltaSweep('v2', {
        first: 6,
        last: 10,
        runs: [
          { index: 9, energy_j: 99 },
          { index: 10, energy_j: 1 }
        ],
        bins: [{ first: 1, last: 5 }]
      })
    )!;
    const runs = merged.chart.datasets.runs;
    expect(runs.map((r: any) => r.index)).toEqual([6, 7, 8, 9, 10]);
    expect(runs[3].energy_j).toBe(99);
    expect(runs[0]).toBe(before.chart.datasets.runs[1]); // unchanged rows are kept as they were
    expect(merged.chart.datasets.bins).toEqual([{ first: 1, last: 5 }]);
    expect(merged.chart.mark).toBe('bar'); // the spec around the data is kept
    expect(merged.version).toBe('v2');
    expect(merged.delta).toBeUndefined();
    expect(before.chart.datasets.runs.length).toBe(5); // the previous reply is not touched
  });

  it('keeps the bins when the delta has none, and takes forecast and budget as sent', () => {
    const before = wholeSweep('v1', 3, 4);
    const merged = mergeSweep(
      before,
      deltaSweep('v2', { first: 3, last: 4, budget: [{ budget_j: 5 }] })
    )!;
    expect(merged.chart.datasets.bins).toBe(before.chart.datasets.bins);
    expect(merged.chart.datasets.budget).toEqual([{ budget_j: 5 }]);
  });

  it('returns a whole reply as it is, and null for a delta against another version', () => {
    const whole = wholeSweep('v3', 1, 2);
    expect(mergeSweep(null, whole)).toBe(whole);
    expect(mergeSweep(wholeSweep('v0', 1, 2), deltaSweep('v2', {}))).toBeNull();
    expect(mergeSweep(null, deltaSweep('v2', {}))).toBeNull();
  });
});

describe('SidebarModel with deltas', () => {
  let model: SidebarModel;
  afterEach(async () => {
    await sleep(10);
    model?.dispose();
  });

  it('hands back its version and merges the delta; asks again, whole, when it does not apply', async () => {
    const server = new FakeServer();
    const answers = [
      wholeSweep('v1', 1, 3),
      deltaSweep('v2', { first: 1, last: 4, runs: [{ index: 4, energy_j: 4 }] }),
      deltaSweep('v9', { base: 'unknown' }),
      wholeSweep('v10', 1, 2)
    ];
    server.answer = () => Promise.resolve({ ...reply('s1', 'r1'), sweep: answers.shift()! });
    model = new SidebarModel({ request: server.request, interval_ms: 60_000, auto: false });
    await pollOnce(model);
    expect(server.calls[0][1].since).toBeUndefined();
    await pollOnce(model);
    expect(server.calls[1][1].since).toBe('v1');
    expect(model.data?.sweep?.chart.datasets.runs.map((r: any) => r.index)).toEqual([1, 2, 3, 4]);
    await pollOnce(model);
    expect(server.calls[2][1].since).toBe('v2');
    expect(server.calls[3][1].since).toBeUndefined(); // the whole sweep, asked again at once
    expect(model.data?.sweep?.version).toBe('v10');
    expect(model.data?.sweep?.chart.datasets.runs.length).toBe(2);
  });
});
