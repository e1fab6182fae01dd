import { IRenderMimeRegistry } from '@jupyterlab/rendermime';

import { ChartSlot } from '../chart';
import { el } from '../dom';
import { formatEnergy, formatLowUtil, sweepStats } from '../format';
import { IHostLine, ISweepReply } from '../types';

/**
 * The sweep's energy per host, as a small table: only when more than one host logged runs
 * (a one-machine sweep shows nothing more). The caption says how many hosts and processes.
 */
export function renderHosts(
  node: HTMLElement,
  hosts: IHostLine[] | undefined,
  processes: number | undefined
): void {
  node.textContent = '';
  node.hidden = !hosts || hosts.length < 2;
  if (node.hidden || !hosts) {
    return;
  }
  const procs = processes ?? hosts.reduce((n, h) => n + h.processes, 0);
  node.appendChild(
    el(
      'div',
      'jp-EnergyPanel-hostsCaption',
      `${hosts.length} hosts, ${procs} process${procs === 1 ? '' : 'es'}`
    )
  );
  const table = el('table', 'jp-EnergyPanel-hostsTable');
  const total = hosts.reduce((sum, h) => sum + h.energy_j, 0);
  for (const h of hosts) {
    const row = el('tr', 'jp-EnergyPanel-host');
    row.appendChild(el('td', 'jp-EnergyPanel-hostName', h.host));
    row.appendChild(el('td', undefined, `${h.runs} run${h.runs === 1 ? '' : 's'}`));
    row.appendChild(el('td', undefined, formatEnergy(h.energy_j)));
    row.appendChild(
      el('td', undefined, total > 0 ? `${Math.round((100 * h.energy_j) / total)}%` : '')
    );
    row.appendChild(el('td', undefined, `${h.processes} proc.`));
    table.appendChild(row);
  }
  node.appendChild(table);
}

/** The selected sweep: status and name, totals (forecast, budget), its chart, the latest run. */
export class SweepView {
  constructor(rendermime: IRenderMimeRegistry) {
    this._chart = new ChartSlot(rendermime, 'jp-EnergyPanel-sweepChart');
    this.node.hidden = true;
    this.node.appendChild(this._title);
    this.node.appendChild(this._totals);
    this.node.appendChild(this._hosts);
    this.node.appendChild(this._loading);
    this.node.appendChild(this._chart.node);
    this.node.appendChild(this._latest);
  }

  readonly node = el('section', 'jp-EnergyPanel-sweep');

  /** Draw the sweep; null hides the section. */
  async render(data: ISweepReply | null): Promise<void> {
    if (!data) {
      this.hide();
      return;
    }
    this.node.hidden = false;
    const t = data.totals;
    const title = this._title;
    title.textContent = '';
    title.appendChild(el('span', `jp-EnergyPanel-dot jp-EnergyPanel-${data.sweep.status}`));
    title.appendChild(el('span', 'jp-EnergyPanel-sweepTitleText', data.sweep.name));
    if (t.estimated) {
      title.appendChild(el('span', 'jp-EnergyPanel-badge jp-EnergyPanel-estimated', 'estimated'));
    }

    const totals = this._totals;
    totals.textContent = '';
    const stat = (value: string, label: string, cls = '') => {
      const box = el('div', `jp-EnergyPanel-stat ${cls}`);
      box.appendChild(el('div', 'jp-EnergyPanel-statValue', value));
      box.appendChild(el('div', 'jp-EnergyPanel-statLabel', label));
      totals.appendChild(box);
    };
    for (const [value, label, cls] of sweepStats(t)) {
      stat(value, label, cls);
    }
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

    renderHosts(this._hosts, data.hosts, t.processes);
    this._loading.hidden = !data.loading;

    const last = data.latest_run;
    this._latest.textContent = '';
    if (last) {
      this._latest.appendChild(el('span', `jp-EnergyPanel-dot jp-EnergyPanel-${last.status}`));
      this._latest.appendChild(
        el(
          'span',
          undefined,
          `#${last.index} ${last.name} · ${last.status} · ${formatEnergy(last.energy_j)}${
            last.live ? ' so far' : ''
          }`
        )
      );
      const low = last.live
        ? null
        : formatLowUtil(last.energy_low_util_j, last.energy_j, last.low_util_threshold);
      if (low) {
        this._latest.appendChild(el('span', 'jp-EnergyPanel-lowUtil', ` · ${low}`));
      }
    }
    await this._chart.update(data.chart);
  }

  hide(): void {
    this.node.hidden = true;
    this._chart.clear();
  }

  private _chart: ChartSlot;
  private _title = el('h3', 'jp-EnergyPanel-sweepTitle');
  private _totals = el('div', 'jp-EnergyPanel-totals');
  private _latest = el('div', 'jp-EnergyPanel-latest');
  private _hosts = el('div', 'jp-EnergyPanel-hosts');
  private _loading = el(
    'div',
    'jp-EnergyPanel-loading',
    'Reading the older runs; until then they count as one bar from the sweep’s logged totals.'
  );
}
