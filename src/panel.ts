import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { RequestAPI } from './api';
import { el } from './dom';
import { SidebarModel } from './model';
import { ISource } from './types';
import { CompareView } from './views/compare';
import { EmptyView } from './views/empty';
import { SessionView } from './views/session';
import { SweepView } from './views/sweep';
import { SweepsView } from './views/sweeps';

/**
 * The left-sidebar panel: this session's power, the experiment's sweeps side by side
 * (with rebound flags), and the selected sweep growing live. It owns a {@link SidebarModel}
 * (which polls while the panel is visible) and redraws its views when the model changes.
 */
export class EnergyPanel extends Widget {
  constructor(rendermime: IRenderMimeRegistry, request: RequestAPI) {
    super();
    this.addClass('jp-EnergyPanel');
    this._sweeps = new SweepsView(runId => void this.model.selectSweep(runId));
    this._sweep = new SweepView(rendermime);
    this._compare = new CompareView(rendermime);
    this._build();
    this.model = new SidebarModel({ request, visible: () => this.isVisible });
    this.model.changed.connect(() => {
      // one drawing at a time: a chart still rendering is not drawn over
      this._drawn = this._drawn
        .then(() => this._render())
        .catch(reason => console.error('ipython-energy: cannot draw the sidebar', reason));
    });
  }

  readonly model: SidebarModel;

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.dispose();
    this._sweep.hide();
    this._compare.hide();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    void this.model.refresh();
  }

  private _build(): void {
    const header = el('div', 'jp-EnergyPanel-header');
    header.appendChild(el('h2', 'jp-EnergyPanel-title', 'Energy'));
    this._sourceSelect.className = 'jp-EnergyPanel-source';
    this._sourceSelect.title = 'MLflow experiment';
    this._sourceSelect.addEventListener('change', () => {
      void this.model.selectSource(this._sourceSelect.value);
    });
    header.appendChild(this._sourceSelect);
    this.node.appendChild(header);
    this._errorBox.hidden = true;
    for (const node of [
      this._errorBox,
      this._session.node,
      this._empty.node,
      this._sweeps.node,
      this._sweep.node,
      this._compare.node
    ]) {
      this.node.appendChild(node);
    }
  }

  /** Draw the model's last reply; after a failed poll, say so and keep what is shown. */
  private async _render(): Promise<void> {
    const error = this.model.error;
    const data = this.model.data;
    if (error !== null) {
      this._errorBox.hidden = false;
      this._errorBox.textContent = `Cannot read energy data: ${error}. Retrying…`;
      if (data && !this.isDisposed) {
        this._session.render(data.session.sessions); // the kernels' own files, still current
      }
      return;
    }
    if (!data || this.isDisposed) {
      return;
    }
    this._session.render(data.session.sessions);
    const failing = data.sources.filter(s => s.error);
    this._showSources(data.sources, data.selected.source);
    if (!data.experiment) {
      this._sweeps.hide();
      this._sweep.hide();
      this._compare.hide();
      this._sourceSelect.hidden = true;
      this._empty.show(data.hint);
    } else {
      this._empty.hide();
      this._sweeps.render(data.experiment, data.selected.sweep);
      await this._sweep.render(data.sweep);
      await this._compare.render(data.experiment);
    }
    this._showStoreErrors(failing);
  }

  /** The source picker, shown when there is more than one source to pick from. */
  private _showSources(sources: ISource[], selected: string | null): void {
    const usable = sources.filter(s => s.exists);
    this._sourceSelect.textContent = '';
    for (const s of usable) {
      const option = el('option', undefined, `${s.experiment} · ${s.tracking_uri}`);
      option.value = s.id;
      this._sourceSelect.appendChild(option);
    }
    this._sourceSelect.hidden = usable.length < 2;
    if (selected !== null) {
      this._sourceSelect.value = selected;
    }
  }

  /** Stores that could not be read (the panel still shows the others). */
  private _showStoreErrors(failing: ISource[]): void {
    this._errorBox.hidden = failing.length === 0;
    this._errorBox.textContent = failing
      .map(s => `Cannot read ${s.experiment} at ${s.tracking_uri}: ${s.error}`)
      .join('\n');
  }

  private _drawn: Promise<void> = Promise.resolve();
  private _sourceSelect = el('select');
  private _errorBox = el('div', 'jp-EnergyPanel-error');
  private _session = new SessionView();
  private _empty = new EmptyView();
  private _sweeps: SweepsView;
  private _sweep: SweepView;
  private _compare: CompareView;
}
