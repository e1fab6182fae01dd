import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/**
 * GET a JSON document from the ipython-energy server extension.
 *
 * The path is built only from ids the server handed out (source ids, run ids);
 * nothing user-typed reaches a URL.
 */
export async function requestAPI<T>(...parts: string[]): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(
    settings.baseUrl,
    'ipython-energy',
    'api',
    ...parts.map(encodeURIComponent)
  );
  const response = await ServerConnection.makeRequest(url, {}, settings);
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try {
      message = JSON.parse(text).message || text;
    } catch {
      // not JSON: keep the text
    }
    throw new ServerConnection.ResponseError(response, message);
  }
  return JSON.parse(text) as T;
}
