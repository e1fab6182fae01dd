import { IRenderMimeRegistry } from '@jupyterlab/rendermime';

import { ChartSlot } from '../chart';
import { el } from '../dom';
import { formatEnergy, formatLowUtil, sweepStats } from '../format';
import { ISweepReply } from '../types';

/** The selected sweep: status and name, totals (forecast, budget), its chart, the latest run. */
export class SweepView {
  constructor(rendermime: IRenderMimeRegistry) {
    this._chart = new ChartSlot(rendermime, 'jp-EnergyPanel-sweepChart');
    this.node.hidden = true;
    this.node.appendChild(this._title);
    this.node.appendChild(this._totals);
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
}
