import { el } from '../dom';

/** What a new user sees before any measurement: how to start, in three steps. */
export class EmptyView {
  readonly node = el('section', 'jp-EnergyPanel-empty');

  constructor() {
    this.node.hidden = true;
  }

  /** `hint` (the server's longer explanation) shows on hover. */
  show(hint: string): void {
    const box = this.node;
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

  hide(): void {
    this.node.hidden = true;
  }
}
