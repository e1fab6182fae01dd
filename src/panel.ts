import { IRenderMimeRegistry, MimeModel } from '@jupyterlab/rendermime';
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import { Poll } from '@lumino/polling';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { requestAPI } from './api';
import {
  IExperimentReply,
  IExperimentsReply,
  IRebound,
  ISession,
  ISessionReply,
  ISource,
  ISweepReply,
  ISweepSummary
} from './types';

const VEGALITE_MIME = 'application/vnd.vegalite.v5+json';
/**
 * JupyterLab's Vega renderer makes a PNG of every chart it draws unless the model
 * already carries one; the sidebar redraws every 2 s, so it hands over a 1x1 placeholder.
 */
const PLACEHOLDER_PNG =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=';

/** Every user-visible string goes through textContent; no HTML is ever built from data. */
function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

export function formatEnergy(joules: number | null | undefined): string {
  if (joules === null || joules === undefined || !isFinite(joules)) {
    return '–';
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

function formatPower(watts: number | null | undefined): string {
  if (watts === null || watts === undefined || !isFinite(watts)) {
    return '–';
  }
  return watts >= 1000 ? `${(watts / 1000).toPrecision(3)} kW` : `${watts.toPrecision(3)} W`;
}

function formatPercent(fraction: number): string {
  const pct = Math.round(fraction * 100);
  return pct >= 0 ? `+${pct}%` : `−${-pct}%`;
}

/** A chart slot: renders a Vega-Lite spec through the app's rendermime registry. */
class ChartSlot {
  constructor(rendermime: IRenderMimeRegistry, className: string) {
    this._rendermime = rendermime;
    this.node = el('div', `jp-EnergyPanel-chart ${className}`);
  }

  readonly node: HTMLDivElement;

  async update(spec: any | null): Promise<void> {
    if (!spec) {
      this.clear();
      return;
    }
    const text = JSON.stringify(spec);
    if (text === this._last) {
      return;
    }
    this._last = text;
    if (!this._renderer) {
      if (!this._rendermime.preferredMimeType({ [VEGALITE_MIME]: spec }, 'any')) {
        this.node.textContent = 'No Vega-Lite renderer is available in this JupyterLab.';
        return;
      }
      this._renderer = this._rendermime.createRenderer(VEGALITE_MIME);
      this.node.appendChild(this._renderer.node);
    }
    const model = new MimeModel({
      data: { [VEGALITE_MIME]: spec, 'image/png': PLACEHOLDER_PNG },
      metadata: { [VEGALITE_MIME]: { embed_options: { actions: false, renderer: 'svg' } } },
      trusted: true
    });
    await this._renderer.renderModel(model);
  }

  clear(): void {
    this._last = '';
    if (this._renderer) {
      this._renderer.dispose();
      this._renderer = null;
    }
    this.node.textContent = '';
  }

  private _rendermime: IRenderMimeRegistry;
  private _renderer: IRenderMime.IRenderer | null = null;
  private _last = '';
}

/**
 * The left-sidebar panel: this session's power, the experiment's sweeps side by side
 * (with rebound flags), and the selected sweep growing live.
 */
export class EnergyPanel extends Widget {
  constructor(rendermime: IRenderMimeRegistry) {
    super();
    this.addClass('jp-EnergyPanel');
    this._sweepChart = new ChartSlot(rendermime, 'jp-EnergyPanel-sweepChart');
    this._experimentChart = new ChartSlot(rendermime, 'jp-EnergyPanel-experimentChart');
    this._build();
    this._poll = new Poll({
      auto: true,
      factory: () => this.refresh(),
      frequency: { interval: 2000, backoff: true, max: 30 * 1000 },
      name: 'ipython-energy:sidebar',
      standby: () => !this.isVisible || 'when-hidden'
    });
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    this._sweepChart.clear();
    this._experimentChart.clear();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this._poll.refresh();
  }

  /** Fetch everything the panel shows and draw it; rejects (so Poll backs off) on failure. */
  async refresh(): Promise<void> {
    try {
      const [listing, session] = await Promise.all([
        requestAPI<IExperimentsReply>('experiments'),
        requestAPI<ISessionReply>('session')
      ]);
      this._renderSession(session);
      const failing = listing.sources.filter(s => s.error);
      const source = this._pickSource(listing.sources);
      if (!source) {
        this._showEmpty(listing.hint);
        this._showStoreErrors(failing);
        return;
      }
      const experiment = await requestAPI<IExperimentReply>('experiments', source.id);
      const sweep = this._pickSweep(experiment.sweeps);
      this._renderExperiment(experiment);
      if (sweep) {
        const data = await requestAPI<ISweepReply>('sweeps', source.id, sweep.run_id);
        await this._renderSweep(data);
      } else {
        this._sweepBox.hidden = true;
        this._sweepChart.clear();
      }
      await this._experimentChart.update(experiment.sweeps.length > 1 ? experiment.chart : null);
      this._compareBox.hidden = experiment.sweeps.length < 2;
      this._showStoreErrors(failing);
    } catch (reason) {
      this._errorBox.hidden = false;
      this._errorBox.textContent = `Cannot read energy data: ${
        (reason as Error).message ?? reason
      }. Retrying…`;
      throw reason;
    }
  }

  /** Stores that could not be read (the panel still shows the others). */
  private _showStoreErrors(failing: ISource[]): void {
    this._errorBox.hidden = failing.length === 0;
    this._errorBox.textContent = failing
      .map(s => `Cannot read ${s.experiment} at ${s.tracking_uri}: ${s.error}`)
      .join('\n');
  }

  // -- building ----------------------------------------------------------------------
  private _build(): void {
    const header = el('div', 'jp-EnergyPanel-header');
    header.appendChild(el('h2', 'jp-EnergyPanel-title', 'Energy'));
    this._sourceSelect.className = 'jp-EnergyPanel-source';
    this._sourceSelect.title = 'MLflow experiment';
    this._sourceSelect.addEventListener('change', () => {
      this._sourceId = this._sourceSelect.value;
      this._sweepId = null;
      void this._poll.refresh();
    });
    header.appendChild(this._sourceSelect);
    this.node.appendChild(header);

    this._errorBox.hidden = true;
    this.node.appendChild(this._errorBox);

    this.node.appendChild(this._sessionBox);

    this._emptyBox.hidden = true;
    this.node.appendChild(this._emptyBox);

    this._sweepsBox.hidden = true;
    this._sweepsBox.appendChild(el('h3', 'jp-EnergyPanel-sectionTitle', 'Sweeps'));
    this._sweepsBox.appendChild(this._sweepsTable);
    this._sweepsBox.appendChild(this._reboundList);
    this.node.appendChild(this._sweepsBox);

    this._sweepBox.hidden = true;
    this._sweepBox.appendChild(this._sweepTitle);
    this._sweepBox.appendChild(this._sweepTotals);
    this._sweepBox.appendChild(this._sweepChart.node);
    this._sweepBox.appendChild(this._latestRun);
    this.node.appendChild(this._sweepBox);

    this._compareBox.hidden = true;
    this._compareBox.appendChild(
      el('h3', 'jp-EnergyPanel-sectionTitle', 'Sweeps compared: J/run and total')
    );
    this._compareBox.appendChild(this._experimentChart.node);
    this.node.appendChild(this._compareBox);
  }

  // -- choosing what to show ---------------------------------------------------------------
  private _pickSource(sources: ISource[]): ISource | null {
    const usable = sources.filter(s => s.exists);
    this._sourceSelect.textContent = '';
    for (const s of usable) {
      const option = el('option', undefined, `${s.experiment} · ${s.tracking_uri}`);
      option.value = s.id;
      this._sourceSelect.appendChild(option);
    }
    this._sourceSelect.hidden = usable.length < 2;
    const chosen = usable.find(s => s.id === this._sourceId) ?? usable[0] ?? null;
    if (chosen) {
      this._sourceSelect.value = chosen.id;
    }
    return chosen;
  }

  /** The sweep the user clicked; otherwise follow the running one, else the newest. */
  private _pickSweep(sweeps: ISweepSummary[]): ISweepSummary | null {
    if (this._sweepId) {
      const picked = sweeps.find(s => s.run_id === this._sweepId);
      if (picked) {
        return picked;
      }
      this._sweepId = null;
    }
    const running = sweeps.filter(s => s.status === 'running');
    const pool = running.length ? running : sweeps;
    this._autoSweepId = pool.length ? pool[pool.length - 1].run_id : null;
    return pool.length ? pool[pool.length - 1] : null;
  }

  // -- drawing -----------------------------------------------------------------------------
  private _showEmpty(hint: string): void {
    this._sweepsBox.hidden = true;
    this._sweepBox.hidden = true;
    this._compareBox.hidden = true;
    this._sweepChart.clear();
    this._experimentChart.clear();
    this._sourceSelect.hidden = true;
    this._errorBox.hidden = true;
    const box = this._emptyBox;
    box.hidden = false;
    box.textContent = '';
    box.appendChild(el('h3', 'jp-EnergyPanel-emptyTitle', 'No energy measurements yet'));
    box.appendChild(el('p', undefined, 'Measure a sweep from any notebook:'));
    const steps = el('ol', 'jp-EnergyPanel-steps');
    const step = (before: string, code: string, after = '') => {
      const li = el('li', undefined, before);
      li.appendChild(el('code', undefined, code));
      if (after) {
        li.appendChild(document.createTextNode(after));
      }
      steps.appendChild(li);
    };
    step('Load the extension: ', '%load_ext ipython_energy');
    step('Start a sweep: ', '%energy sweep NAME --planned 10');
    step('Measure each run: ', '%%energy --run NAME --param lr=0.01', ' at the top of a cell');
    box.appendChild(steps);
    box.appendChild(
      el(
        'p',
        'jp-EnergyPanel-muted',
        'Runs appear here while they are measured: a bar per run, the sweep total rising, ' +
          'and a flag when cheaper runs add up to more energy.'
      )
    );
    box.title = hint;
  }

  private _renderSession(reply: ISessionReply): void {
    const box = this._sessionBox;
    box.textContent = '';
    if (!reply.sessions.length) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.appendChild(el('h3', 'jp-EnergyPanel-sectionTitle', 'This session'));
    for (const s of reply.sessions.slice(0, 3)) {
      box.appendChild(this._sessionCard(s));
    }
    if (reply.sessions.length > 3) {
      box.appendChild(
        el('div', 'jp-EnergyPanel-muted', `and ${reply.sessions.length - 3} more kernels`)
      );
    }
  }

  private _sessionCard(s: ISession): HTMLElement {
    const card = el('div', 'jp-EnergyPanel-session');
    const top = el('div', 'jp-EnergyPanel-sessionTop');
    top.appendChild(el('span', 'jp-EnergyPanel-power', formatPower(s.power_w)));
    top.appendChild(el('span', 'jp-EnergyPanel-muted', ' now'));
    if (s.estimated) {
      const badge = el('span', 'jp-EnergyPanel-badge jp-EnergyPanel-estimated', 'estimated');
      badge.title = Object.entries(s.methods)
        .map(([d, m]) => `${d}: ${m}`)
        .join(', ');
      top.appendChild(badge);
    }
    if (s.stale) {
      top.appendChild(el('span', 'jp-EnergyPanel-badge', `${Math.round(s.age_s)} s old`));
    }
    card.appendChild(top);

    const cells = s.cells_j ?? 0;
    const idle = s.between_cells_j ?? 0;
    const total = s.total_j ?? cells + idle;
    card.appendChild(
      el('div', 'jp-EnergyPanel-sessionTotal', `Session ${formatEnergy(total)}`)
    );
    const bar = el('div', 'jp-EnergyPanel-split');
    const share = cells + idle > 0 ? (100 * cells) / (cells + idle) : 0;
    const cellsBar = el('div', 'jp-EnergyPanel-splitCells');
    cellsBar.style.width = `${share}%`;
    const idleBar = el('div', 'jp-EnergyPanel-splitIdle');
    idleBar.style.width = `${100 - share}%`;
    bar.appendChild(cellsBar);
    bar.appendChild(idleBar);
    card.appendChild(bar);
    const legend = el('div', 'jp-EnergyPanel-splitLegend');
    legend.appendChild(el('span', 'jp-EnergyPanel-keyCells', `cells ${formatEnergy(cells)}`));
    legend.appendChild(
      el('span', 'jp-EnergyPanel-keyIdle', `idle between cells ${formatEnergy(idle)}`)
    );
    card.appendChild(legend);
    if (s.active_sweep || s.active_run) {
      const parts: string[] = [];
      if (s.active_sweep) {
        parts.push(`sweep ${s.active_sweep.name}`);
      }
      if (s.active_run) {
        parts.push(`run ${s.active_run.name} (${formatEnergy(s.active_run.energy_j)})`);
      }
      card.appendChild(el('div', 'jp-EnergyPanel-muted', `Active: ${parts.join(' · ')}`));
    }
    return card;
  }

  private _renderExperiment(data: IExperimentReply): void {
    this._emptyBox.hidden = true;
    this._sweepsBox.hidden = false;
    const table = this._sweepsTable;
    table.textContent = '';
    if (!data.sweeps.length) {
      table.appendChild(
        el(
          'caption',
          'jp-EnergyPanel-muted',
          `No sweeps yet in “${data.experiment.name}”. Start one with %energy sweep NAME.`
        )
      );
    } else {
      const head = el('tr');
      for (const [label, cls] of [
        ['sweep', ''],
        ['runs', 'num'],
        ['J/run', 'num'],
        ['total', 'num']
      ]) {
        head.appendChild(el('th', cls, label));
      }
      table.appendChild(el('thead')).appendChild(head);
      const body = el('tbody');
      const selected = this._sweepId ?? this._autoSweepId;
      for (const s of data.sweeps) {
        const tr = el('tr', 'jp-EnergyPanel-sweepRow');
        tr.dataset.runId = s.run_id;
        if (s.run_id === selected) {
          tr.classList.add('jp-mod-selected');
        }
        if (s.rebound) {
          tr.classList.add('jp-EnergyPanel-rebounding');
        }
        const name = el('td', 'jp-EnergyPanel-sweepName');
        name.appendChild(el('span', `jp-EnergyPanel-dot jp-EnergyPanel-${s.status}`));
        name.appendChild(el('span', undefined, s.name));
        name.title = `${s.name} (${s.status})`;
        tr.appendChild(name);
        tr.appendChild(
          el('td', 'num', s.planned ? `${s.runs}/${s.planned}` : String(s.runs))
        );
        tr.appendChild(el('td', 'num', formatEnergy(s.mean_energy_per_run_j)));
        tr.appendChild(el('td', 'num', formatEnergy(s.energy_j)));
        tr.addEventListener('click', () => {
          this._sweepId = s.run_id;
          void this._poll.refresh();
        });
        body.appendChild(tr);
      }
      table.appendChild(body);
    }
    this._reboundList.textContent = '';
    for (const r of data.rebounds) {
      this._reboundList.appendChild(this._reboundCard(r));
    }
  }

  private _reboundCard(r: IRebound): HTMLElement {
    const card = el('div', 'jp-EnergyPanel-rebound');
    const title = el('div', 'jp-EnergyPanel-reboundTitle');
    title.appendChild(el('span', 'jp-EnergyPanel-reboundIcon', '⚠'));
    title.appendChild(el('span', undefined, 'Rebound: '));
    title.appendChild(el('strong', undefined, r.name));
    card.appendChild(title);
    card.appendChild(el('div', 'jp-EnergyPanel-reboundLabel', r.label));
    card.appendChild(
      el(
        'div',
        'jp-EnergyPanel-muted',
        `vs ${r.vs_name}: J/run ${formatEnergy(r.vs_mean_energy_per_run_j)} → ` +
          `${formatEnergy(r.mean_energy_per_run_j)} (${formatPercent(r.mean_change)}), ` +
          `total ${formatEnergy(r.vs_energy_j)} → ${formatEnergy(r.energy_j)} ` +
          `(${formatPercent(r.total_change)})`
      )
    );
    return card;
  }

  private async _renderSweep(data: ISweepReply): Promise<void> {
    this._sweepBox.hidden = false;
    const t = data.totals;
    this._sweepTitle.textContent = '';
    this._sweepTitle.appendChild(
      el('span', `jp-EnergyPanel-dot jp-EnergyPanel-${data.sweep.status}`)
    );
    this._sweepTitle.appendChild(el('span', 'jp-EnergyPanel-sweepTitleText', data.sweep.name));
    if (t.estimated) {
      this._sweepTitle.appendChild(
        el('span', 'jp-EnergyPanel-badge jp-EnergyPanel-estimated', 'estimated')
      );
    }

    const totals = this._sweepTotals;
    totals.textContent = '';
    const stat = (value: string, label: string, cls = '') => {
      const box = el('div', `jp-EnergyPanel-stat ${cls}`);
      box.appendChild(el('div', 'jp-EnergyPanel-statValue', value));
      box.appendChild(el('div', 'jp-EnergyPanel-statLabel', label));
      totals.appendChild(box);
    };
    stat(formatEnergy(t.energy_j), 'total so far', 'jp-EnergyPanel-totalStat');
    stat(
      t.running_runs ? `${t.runs} (${t.running_runs} live)` : String(t.runs),
      t.planned ? `runs of ${t.planned}` : 'runs'
    );
    stat(formatEnergy(t.mean_energy_per_run_j), 'mean per run');
    if (t.forecast_energy_j !== null) {
      stat(formatEnergy(t.forecast_energy_j), `forecast for ${t.planned}`);
    }
    if (t.budget_j !== null) {
      const used = t.budget_used ?? 0;
      stat(
        `${Math.round(used * 100)}%`,
        `of ${formatEnergy(t.budget_j)} budget`,
        t.over_budget ? 'jp-EnergyPanel-over' : ''
      );
    }

    const last = data.latest_run;
    this._latestRun.textContent = '';
    if (last) {
      this._latestRun.appendChild(el('span', `jp-EnergyPanel-dot jp-EnergyPanel-${last.status}`));
      this._latestRun.appendChild(
        el(
          'span',
          undefined,
          `#${last.index} ${last.name} · ${last.status} · ${formatEnergy(last.energy_j)}${
            last.live ? ' so far' : ''
          }`
        )
      );
    }
    await this._sweepChart.update(data.chart);
  }

  private _poll: Poll;
  private _sourceId: string | null = null;
  private _sweepId: string | null = null;
  private _autoSweepId: string | null = null;
  private _sweepChart: ChartSlot;
  private _experimentChart: ChartSlot;
  private _sourceSelect = el('select');
  private _errorBox = el('div', 'jp-EnergyPanel-error');
  private _sessionBox = el('section', 'jp-EnergyPanel-sessionBox');
  private _emptyBox = el('section', 'jp-EnergyPanel-empty');
  private _sweepsBox = el('section', 'jp-EnergyPanel-sweeps');
  private _sweepsTable = el('table', 'jp-EnergyPanel-sweepTable');
  private _reboundList = el('div', 'jp-EnergyPanel-rebounds');
  private _sweepBox = el('section', 'jp-EnergyPanel-sweep');
  private _sweepTitle = el('h3', 'jp-EnergyPanel-sweepTitle');
  private _sweepTotals = el('div', 'jp-EnergyPanel-totals');
  private _latestRun = el('div', 'jp-EnergyPanel-latest');
  private _compareBox = el('section', 'jp-EnergyPanel-compare');
}
