import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** Query arguments of a request: opaque ids the server handed out; null or absent: not sent. */
export interface IQuery {
  [name: string]: string | null | undefined;
}

/** What the model calls to reach the server (the network seam; tests pass a fake). */
export type RequestAPI = <T>(endpoint: string, query?: IQuery) => Promise<T>;

/**
 * GET a JSON document from the ipython-energy server extension.
 *
 * `endpoint` is a fixed route name; ids travel only as query arguments, and only ids the
 * server handed out (source ids, run ids); nothing user-typed reaches a URL.
 */
export async function requestAPI<T>(endpoint: string, query: IQuery = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const args: { [name: string]: string } = {};
  for (const [name, value] of Object.entries(query)) {
    if (value !== null && value !== undefined) {
      args[name] = value;
    }
  }
  const url =
    URLExt.join(settings.baseUrl, 'ipython-energy', 'api', endpoint) +
    URLExt.objectToQueryString(args);
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
