// The public read API, called with the key in the Authorization header only (never in a URL:
// URLs end up in history, logs and Referer headers).

export interface Filters {
  period: string;
  granularity: string;
  currency: string;
  timezone: string;
}

/** An API refusal, worded for a shop owner, with the HTTP status and the API's own message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly apiMessage: string,
  ) {
    super(explain(status, apiMessage));
    this.name = 'ApiError';
  }

  /** The key itself was refused: every panel fails the same way, the page says so once. */
  get badKey(): boolean {
    return this.status === 401 || this.status === 403;
  }
}

function explain(status: number, message: string): string {
  if (status === 401) return `This key was not accepted (401): check that you pasted the whole read key. ${message}`;
  if (status === 403) return `This key may not read this data (403): it needs the "read" scope. ${message}`;
  if (status === 429) return `Too many requests (429): the panel will load again shortly. ${message}`;
  if (status === 0) return `The server could not be reached: ${message}`;
  return `The server answered ${status}: ${message}`;
}

export class Api {
  constructor(
    private readonly key: string,
    private readonly base = '',
  ) {}

  async get<T>(path: string, params: Record<string, string | number | undefined>, signal?: AbortSignal): Promise<T> {
    return (await this.request(`${path}${query(params)}`, { method: 'GET', signal })).json() as Promise<T>;
  }

  async post<T>(path: string, body: unknown, signal?: AbortSignal): Promise<T> {
    const response = await this.request(path, {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'Content-Type': 'application/json' },
      signal,
    });
    return response.json() as Promise<T>;
  }

  /** The raw response (exports: read as a Blob, streamed by the browser). */
  async raw(path: string, params: Record<string, string | number | undefined>, signal?: AbortSignal): Promise<Response> {
    return this.request(`${path}${query(params)}`, { method: 'GET', signal });
  }

  /** The POST body of an error answer (the custom query's catalogue comes from one). */
  async postForError(path: string, body: unknown): Promise<ApiErrorBody | null> {
    const response = await this.send(path, {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'Content-Type': 'application/json' },
    });
    if (response.ok) return null;
    if (response.status === 401 || response.status === 403) throw await toError(response);
    return (await response.json().catch(() => null)) as ApiErrorBody | null;
  }

  private async request(path: string, init: RequestInit): Promise<Response> {
    const response = await this.send(path, init);
    if (!response.ok) throw await toError(response);
    return response;
  }

  private async send(path: string, init: RequestInit): Promise<Response> {
    const headers = new Headers(init.headers);
    headers.set('Authorization', `Bearer ${this.key}`);
    try {
      return await fetch(`${this.base}${path}`, { ...init, headers, cache: 'no-store', referrerPolicy: 'no-referrer' });
    } catch (error) {
      if (error instanceof DOMException && error.name === 'AbortError') throw error;
      throw new ApiError(0, String((error as Error)?.message ?? error));
    }
  }
}

export interface ApiErrorBody {
  code?: number;
  message?: string;
  details?: Array<{ '@type'?: string; reason?: string; metadata?: Record<string, string> }>;
}

async function toError(response: Response): Promise<ApiError> {
  let message = response.statusText;
  try {
    const body = (await response.json()) as ApiErrorBody;
    if (body && typeof body.message === 'string') message = body.message;
  } catch {
    // not JSON (a proxy's page): the status text is all there is
  }
  return new ApiError(response.status, message);
}

function query(params: Record<string, string | number | undefined>): string {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== '') search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}
