import { el } from '../dom';
import { formatEnergy, formatPower } from '../format';
import { ISession } from '../types';

/** "This session": each live kernel's power now and its energy, cells vs idle between cells. */
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

  const cells = s.cells_j ?? 0;
  const idle = s.between_cells_j ?? 0;
  const total = s.total_j ?? cells + idle;
  card.appendChild(el('div', 'jp-EnergyPanel-sessionTotal', `Session ${formatEnergy(total)}`));
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
