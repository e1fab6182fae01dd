import { IQuery } from '../api';
import { SidebarModel } from '../model';
import { IPollReply } from '../types';

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
