import { IRenderMimeRegistry } from '@jupyterlab/rendermime';

import { ChartSlot } from '../chart';
import { el } from '../dom';
import { IExperimentReply } from '../types';

/** The experiment's sweeps compared (J/run and total), shown once there are two or more. */
export class CompareView {
  constructor(rendermime: IRenderMimeRegistry) {
    this._chart = new ChartSlot(rendermime, 'jp-EnergyPanel-experimentChart');
    this.node.hidden = true;
    this.node.appendChild(
      el('h3', 'jp-EnergyPanel-sectionTitle', 'Sweeps compared: J/run and total')
    );
    this.node.appendChild(this._chart.node);
  }

  readonly node = el('section', 'jp-EnergyPanel-compare');

  async render(data: IExperimentReply): Promise<void> {
    const compared = data.sweeps.length > 1;
    await this._chart.update(compared ? data.chart : null);
    this.node.hidden = !compared;
  }

  hide(): void {
    this.node.hidden = true;
    this._chart.clear();
  }

  private _chart: ChartSlot;
}
