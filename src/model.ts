import { IDisposable } from '@lumino/disposable';
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { RequestAPI } from './api';
import { IPollReply, ISweepReply } from './types';

/**
 * A sweep reply made whole: one that carries a `delta` is merged into the chart of the
 * version it was made against (`previous`); a whole one is returned as it is. Null when the
 * delta does not apply to `previous` (another version or sweep): then ask again without
 * `since`.
 */
export function mergeSweep(previous: ISweepReply | null, reply: ISweepReply): ISweepReply | null {
  const delta = reply.delta;
  if (!delta) {
    return reply;
  }
  if (!previous?.chart || previous.version !== delta.base) {
    return null;
  }
  const old = previous.chart.datasets ?? {};
  const byIndex = new Map<number, any>();
  for (const row of old.runs ?? []) {
    if (row.index >= delta.first && row.index <= delta.last) {
      byIndex.set(row.index, row);
    }
  }
  for (const row of delta.runs) {
    byIndex.set(row.index, row);
  }
  const runs = [...byIndex.values()].sort((a, b) => a.index - b.index);
  const datasets = {
    ...old,
    runs,
    bins: delta.bins ?? old.bins ?? [],
    forecast: delta.forecast,
    budget: delta.budget
  };
  const merged: ISweepReply = { ...reply, chart: { ...previous.chart, datasets } };
  delete merged.delta;
  return merged;
}

/**
 * What the sidebar shows, and the selection: one `GET poll` every 2 s while the panel is
 * visible (backing off up to 30 s while the server fails, standing by while the panel or the
 * browser tab is hidden). `changed` fires after every reply and every failure.
 */
export class SidebarModel implements IDisposable {
  constructor(options: SidebarModel.IOptions) {
    this._request = options.request;
    const visible = options.visible ?? (() => true);
    this._poll = new Poll({
      auto: options.auto ?? true,
      factory: () => this._fetch(),
      frequency: {
        interval: options.interval_ms ?? 2000,
        backoff: true,
        max: 30 * 1000
      },
      name: 'ipython-energy:sidebar',
      standby: () => !visible() || 'when-hidden'
    });
  }

  /** Fires after each poll: with new data, or with an error (the data stay as they were). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The last reply, or null before the first. */
  get data(): IPollReply | null {
    return this._data;
  }

  /** Why the last poll failed (the server's message), or null when it succeeded. */
  get error(): string | null {
    return this._error;
  }

  /** The source shown: the one picked if it exists, else the first. */
  get source(): string | null {
    return this._data?.selected.source ?? null;
  }

  /** The sweep shown: the one picked if it is listed, else the newest running, else the newest. */
  get sweep(): string | null {
    return this._data?.selected.sweep ?? null;
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  /** Show this source (an id from `data.sources`) and its followed sweep; polls now. */
  selectSource(id: string): Promise<void> {
    this._sourceId = id;
    this._sweepId = null;
    return this._pollNow();
  }

  /** Show this sweep (a run id from `data.experiment.sweeps`) until it is gone; polls now. */
  selectSweep(runId: string): Promise<void> {
    this._sweepId = runId;
    return this._pollNow();
  }

  /** Poll now (unless standing by or a refresh is already under way), then every interval. */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  /** The poll's current tick: `await model.refresh(); await model.tick` waits for the reply. */
  get tick(): Promise<Poll> {
    return this._poll.tick;
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    void this._poll.stop(); // clears the scheduled tick, which dispose() alone leaves pending
    this._poll.dispose();
    Signal.clearData(this);
  }

  /**
   * A new selection: poll now even while a request is under way (its answer, for the old
   * selection, is then dropped), where `refresh()` would wait for the next interval.
   */
  private _pollNow(): Promise<void> {
    return this._poll.schedule({ interval: Poll.IMMEDIATE, phase: 'refreshed' });
  }

  /**
   * One request; rejects on failure so that the poll backs off. It hands back the version of
   * the sweep it shows (`since`), so the reply carries only what changed; a delta that does
   * not apply is asked for again, whole.
   */
  private async _fetch(): Promise<void> {
    const sweep = this._sweepId;
    const seq = ++this._seq;
    const base = this._data?.sweep ?? null; // what a delta in the reply applies to
    let reply: IPollReply;
    let whole: ISweepReply | null = null;
    try {
      const since = base?.version ? { since: base.version } : {};
      reply = await this._request<IPollReply>('poll', { source: this._sourceId, sweep, ...since });
      whole = reply.sweep ? mergeSweep(base, reply.sweep) : null;
      if (reply.sweep && whole === null) {
        reply = await this._request<IPollReply>('poll', { source: this._sourceId, sweep });
        whole = reply.sweep;
      }
    } catch (reason) {
      if (seq === this._seq) {
        this._error = (reason as Error)?.message ?? String(reason);
        this._changed.emit();
      }
      throw reason;
    }
    if (seq !== this._seq || this.isDisposed) {
      return; // a newer request (a new selection) is on its way
    }
    if (reply.unavailable !== undefined) {
      // MLflow is not answering: the session is new, the sweeps shown stay as they were.
      const kept = this._data;
      this._data =
        kept !== null && kept.selected.source === reply.selected.source
          ? { ...reply, selected: kept.selected, experiment: kept.experiment, sweep: kept.sweep }
          : reply;
      this._error = reply.unavailable;
      this._changed.emit();
      throw new Error(reply.unavailable); // back off while the store does not answer
    }
    if (sweep !== null && reply.selected.sweep !== sweep && this._sweepId === sweep) {
      this._sweepId = null; // the picked sweep is gone: follow the running one again
    }
    this._data = { ...reply, sweep: whole };
    this._error = null;
    this._changed.emit();
  }

  private _request: RequestAPI;
  private _poll: Poll;
  private _seq = 0;
  private _sourceId: string | null = null;
  private _sweepId: string | null = null;
  private _data: IPollReply | null = null;
  private _error: string | null = null;
  private _changed = new Signal<this, void>(this);
}

export namespace SidebarModel {
  export interface IOptions {
    /** Reaches the server; `requestAPI` in the app. */
    request: RequestAPI;
    /** Whether the panel is on screen; the poll stands by while it is not. Default: always. */
    visible?: () => boolean;
    /** Start polling at once (default true). */
    auto?: boolean;
    /** Poll interval in ms (default 2000). */
    interval_ms?: number;
  }
}
