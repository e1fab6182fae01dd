import { IRenderMimeRegistry, MimeModel } from '@jupyterlab/rendermime';
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';

import { el } from './dom';

const VEGALITE_MIME = 'application/vnd.vegalite.v5+json';
/**
 * JupyterLab's Vega renderer makes a PNG of every chart it draws unless the model
 * already carries one; the sidebar redraws every 2 s, so it hands over a 1x1 placeholder.
 */
const PLACEHOLDER_PNG =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=';

/**
 * A chart slot: renders a Vega-Lite spec through the app's rendermime registry
 * (JupyterLab's own Vega renderer; no vega in this bundle). An unchanged spec is not redrawn.
 */
export class ChartSlot {
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
