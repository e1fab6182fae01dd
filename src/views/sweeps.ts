import { el } from '../dom';
import { formatEnergy, formatPercent, formatReboundChanges } from '../format';
import { IExperimentReply, IRebound } from '../types';

/** "Sweeps": the experiment's sweeps side by side (click one to show it), and rebound cards. */
export class SweepsView {
  constructor(onSelect: (runId: string) => void) {
    this._onSelect = onSelect;
    this.node.hidden = true;
    this.node.appendChild(el('h3', 'jp-EnergyPanel-sectionTitle', 'Sweeps'));
    this.node.appendChild(this._table);
    this.node.appendChild(this._rebounds);
  }

  readonly node = el('section', 'jp-EnergyPanel-sweeps');

  /** Draw the table; `selected` is the sweep shown below it. */
  render(data: IExperimentReply, selected: string | null): void {
    this.node.hidden = false;
    const table = this._table;
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
      for (const s of data.sweeps) {
        const tr = el('tr', 'jp-EnergyPanel-sweepRow');
        tr.dataset.runId = s.run_id;
        if (s.run_id === selected) {
          tr.classList.add('jp-mod-selected');
        }
        if (s.rebound) {
          tr.classList.add('jp-EnergyPanel-rebounding');
        } else if (s.within_noise) {
          tr.classList.add('jp-EnergyPanel-withinNoise');
        }
        const name = el('td', 'jp-EnergyPanel-sweepName');
        name.appendChild(el('span', `jp-EnergyPanel-dot jp-EnergyPanel-${s.status}`));
        name.appendChild(el('span', undefined, s.name));
        name.title = `${s.name} (${s.status})`;
        const check = s.rebound ?? s.within_noise;
        if (check) {
          tr.title = `${s.rebound ? 'rebound' : 'no rebound beyond noise'} vs ${check.vs_name}: ${formatReboundChanges(check)}`;
        }
        tr.appendChild(name);
        tr.appendChild(el('td', 'num', s.planned ? `${s.runs}/${s.planned}` : String(s.runs)));
        tr.appendChild(el('td', 'num', formatEnergy(s.mean_energy_per_run_j)));
        tr.appendChild(el('td', 'num', formatEnergy(s.energy_j)));
        tr.addEventListener('click', () => this._onSelect(s.run_id));
        body.appendChild(tr);
      }
      table.appendChild(body);
    }
    this._rebounds.textContent = '';
    for (const r of data.rebounds) {
      this._rebounds.appendChild(reboundCard(r));
    }
    for (const r of data.within_noise ?? []) {
      this._rebounds.appendChild(withinNoiseCard(r));
    }
  }

  hide(): void {
    this.node.hidden = true;
  }

  private _onSelect: (runId: string) => void;
  private _table = el('table', 'jp-EnergyPanel-sweepTable');
  private _rebounds = el('div', 'jp-EnergyPanel-rebounds');
}

function reboundCard(r: IRebound): HTMLElement {
  const card = el('div', 'jp-EnergyPanel-rebound');
  const title = el('div', 'jp-EnergyPanel-reboundTitle');
  title.appendChild(el('span', 'jp-EnergyPanel-reboundIcon', '⚠'));
  title.appendChild(el('span', undefined, 'Rebound: '));
  title.appendChild(el('strong', undefined, r.name));
  card.appendChild(title);
  // with an interval the label carries it too; the card shows it once, on its own line
  const headline = r.interval
    ? `${formatPercent(r.interval.mean_change)} J/run, ${formatPercent(r.interval.total_change)} total`
    : r.label;
  card.appendChild(el('div', 'jp-EnergyPanel-reboundLabel', headline));
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
  card.appendChild(el('div', 'jp-EnergyPanel-reboundInterval', formatReboundChanges(r)));
  return card;
}

/** An apparent rebound inside the run-to-run noise: shown with its interval, not flagged. */
function withinNoiseCard(r: IRebound): HTMLElement {
  const card = el('div', 'jp-EnergyPanel-rebound jp-mod-withinNoise');
  const title = el('div', 'jp-EnergyPanel-reboundTitle');
  title.appendChild(el('span', undefined, 'No rebound beyond noise: '));
  title.appendChild(el('strong', undefined, r.name));
  title.appendChild(el('span', undefined, ` vs ${r.vs_name}`));
  card.appendChild(title);
  card.appendChild(el('div', 'jp-EnergyPanel-reboundInterval', formatReboundChanges(r)));
  card.appendChild(el('div', 'jp-EnergyPanel-muted', r.note));
  return card;
}
