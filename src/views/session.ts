import { el } from '../dom';
import { formatEnergy, formatPower, formatSeconds } from '../format';
import { ISession } from '../types';

/** One part of a session's energy, as the card's bar and legend show it. */
export interface ISessionPart {
  /** CSS suffix: `jp-EnergyPanel-split<key>`, `jp-EnergyPanel-key<key>`. */
  key: 'Cells' | 'Other' | 'Idle';
  label: string;
  joules: number;
  seconds: number | null;
  /** Percent of the bar (the parts' shares add up to 100, or are all 0). */
  share: number;
}

/**
 * The parts of a session's energy.  A kernel of this version writes three that add up to the
 * total: in runs and measured cells, other executing cells, idle.  A kernel of the previous
 * version wrote only `cells_j` and `between_cells_j`: those two are shown as it named them.
 */
export function sessionParts(s: ISession): ISessionPart[] {
  let parts: Omit<ISessionPart, 'share'>[];
  if (s.in_runs_j !== null && s.in_runs_j !== undefined) {
    parts = [
      {
        key: 'Cells',
        label: 'runs & measured cells',
        joules: s.in_runs_j,
        seconds: s.in_runs_s ?? null
      },
      {
        key: 'Other',
        label: 'other cells',
        joules: s.other_cells_j ?? 0,
        seconds: s.other_cells_s ?? null
      },
      { key: 'Idle', label: 'idle', joules: s.idle_j ?? 0, seconds: s.idle_s ?? null }
    ];
  } else {
    parts = [
      { key: 'Cells', label: 'cells', joules: s.cells_j ?? 0, seconds: null },
      { key: 'Idle', label: 'idle between cells', joules: s.between_cells_j ?? 0, seconds: null }
    ];
  }
  const sum = parts.reduce((acc, p) => acc + Math.max(0, p.joules), 0);
  return parts.map(p => ({ ...p, share: sum > 0 ? (100 * Math.max(0, p.joules)) / sum : 0 }));
}

/** "This session": each live kernel's power now and its energy in three parts. */
export class SessionView {
  readonly node = el('section', 'jp-EnergyPanel-sessionBox');

  render(sessions: ISession[]): void {
    const box = this.node;
    box.textContent = '';
    if (!sessions.length) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    box.appendChild(el('h3', 'jp-EnergyPanel-sectionTitle', 'This session'));
    for (const s of sessions.slice(0, 3)) {
      box.appendChild(card(s));
    }
    if (sessions.length > 3) {
      box.appendChild(el('div', 'jp-EnergyPanel-muted', `and ${sessions.length - 3} more kernels`));
    }
  }
}

function card(s: ISession): HTMLElement {
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

  const parts = sessionParts(s);
  const sum = parts.reduce((acc, p) => acc + p.joules, 0);
  const total = s.total_j ?? sum;
  card.appendChild(el('div', 'jp-EnergyPanel-sessionTotal', `Session ${formatEnergy(total)}`));
  const bar = el('div', 'jp-EnergyPanel-split');
  const legend = el('div', 'jp-EnergyPanel-splitLegend');
  for (const p of parts) {
    const segment = el('div', `jp-EnergyPanel-split${p.key}`);
    segment.style.width = `${p.share}%`;
    bar.appendChild(segment);
    const key = el('span', `jp-EnergyPanel-key${p.key}`, `${p.label} ${formatEnergy(p.joules)}`);
    if (p.seconds !== null) {
      key.title = `${p.label}: ${formatEnergy(p.joules)} over ${formatSeconds(p.seconds)}`;
    }
    legend.appendChild(key);
  }
  card.appendChild(bar);
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
