import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { LabIcon } from '@jupyterlab/ui-components';

import { requestAPI } from './api';
import { EnergyPanel } from './panel';

/** A lightning bolt in a circle, coloured by the theme (jp-icon3). */
const energyIcon = new LabIcon({
  name: 'ipython-energy:bolt',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
    '<path class="jp-icon3" fill="#616161" d="M13.5 2 4.5 13.5h6L9.5 22l9-11.5h-6z"/></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'ipython-energy:sidebar',
  description: 'Energy of sweeps, runs and this session, read from MLflow.',
  autoStart: true,
  requires: [IRenderMimeRegistry],
  optional: [ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    rendermime: IRenderMimeRegistry,
    restorer: ILayoutRestorer | null
  ) => {
    const panel = new EnergyPanel(rendermime, requestAPI);
    panel.id = 'ipython-energy-sidebar';
    panel.title.icon = energyIcon;
    panel.title.caption = 'Energy (ipython-energy)';
    app.shell.add(panel, 'left', { rank: 850 });
    if (restorer) {
      restorer.add(panel, 'ipython-energy-sidebar');
    }
  }
};

export default plugin;
