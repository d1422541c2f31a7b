/** HTTP calls to the REST gateway with the retry rules of docs/clients.md ("Retries"). */

import { CommerceError, errorFromResponse } from "./errors.js";
import { sleep } from "./runtime.js";

export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

export interface TransportConfig {
  apiKey: string;
  baseUrl: string;
  fetch: FetchLike;
  /** Timeout of each attempt, ms. */
  timeoutMs: number;
  maxRetries: number;
  minBackoffMs: number;
  maxBackoffMs: number;
}

/** Per-call options of every method that talks to the server. */
export interface CallOptions {
  /** Aborts the call (and its retries); the call rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * The call's deadline in ms, over all its attempts and backoff waits: no retry starts past it
   * (each attempt is also bounded by the client's `timeoutMs`).
   */
  timeoutMs?: number;
}

export type QueryValue = string | number | boolean | readonly (string | number)[] | undefined | null;

export interface Request {
  method: "GET" | "POST";
  path: string;
  query?: Record<string, QueryValue>;
  /** Builds the body of each attempt (so that `sentAt` is stamped per attempt). */
  body?: () => string;
  keepalive?: boolean;
  /** Overrides the client's maxRetries (0: one attempt). */
  maxRetries?: number;
  /** Keep the attempt's timeout to the headers only (streamed bodies). */
  stream?: boolean;
  /** Called as each attempt starts. */
  onAttempt?: () => void;
}

/** 502, 503, 504, 429 and 409 ABORTED (an id still being stored by another request). */
export function retryable(error: CommerceError): boolean {
  if (error.status === 0) return error.code === "UNAVAILABLE" || error.code === "DEADLINE_EXCEEDED";
  return (
    error.status === 502 ||
    error.status === 503 ||
    error.status === 504 ||
    error.status === 429 ||
    (error.status === 409 && error.code === "ABORTED")
  );
}

export class Transport {
  constructor(readonly config: TransportConfig) {}

  url(path: string, query?: Record<string, QueryValue>): string {
    const base = this.config.baseUrl.replace(/\/+$/, "");
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query ?? {})) {
      if (value === undefined || value === null || value === "") continue;
      if (Array.isArray(value)) {
        for (const v of value) params.append(name, String(v));
      } else {
        params.append(name, String(value));
      }
    }
    const qs = params.toString();
    return base + path + (qs ? "?" + qs : "");
  }

  /** Backoff before retry `n` (from 1): full jitter in [0, min(max, min * 2^(n-1))]. */
  backoff(n: number): number {
    const cap = Math.min(this.config.maxBackoffMs, this.config.minBackoffMs * 2 ** (n - 1));
    return Math.random() * cap;
  }

  /** How long to wait before retry `n` after `error`: at least the server's delay. */
  delay(n: number, error: CommerceError): number {
    return Math.max(error.retryAfterMs ?? 0, this.backoff(n));
  }

  /** One request with retries; resolves with the successful Response (body unread when `stream`). */
  async send(request: Request, options: CallOptions = {}): Promise<Response> {
    const maxRetries = request.maxRetries ?? this.config.maxRetries;
    const deadline = options.timeoutMs !== undefined ? Date.now() + options.timeoutMs : Infinity;
    for (let attempt = 0; ; attempt++) {
      let error: CommerceError;
      try {
        return await this.attempt(request, options.signal, deadline);
      } catch (e) {
        if (!(e instanceof CommerceError)) throw e; // the caller's abort
        error = e;
      }
      if (attempt >= maxRetries || !retryable(error)) throw error;
      const wait = this.delay(attempt + 1, error);
      if (Date.now() + wait >= deadline) throw error;
      await sleep(wait, options.signal);
    }
  }

  private async attempt(request: Request, signal: AbortSignal | undefined, deadline: number): Promise<Response> {
    signal?.throwIfAborted();
    request.onAttempt?.();
    const controller = new AbortController();
    const budget = Math.min(this.config.timeoutMs, deadline - Date.now());
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, Math.max(0, budget));
    const onAbort = () => controller.abort(signal!.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.config.apiKey}`,
      Accept: "application/json",
    };
    const init: RequestInit = { method: request.method, headers, signal: controller.signal };
    if (request.body) {
      headers["Content-Type"] = "application/json";
      init.body = request.body();
    }
    if (request.keepalive) init.keepalive = true;
    let streaming = false;
    try {
      const response = await this.config.fetch(this.url(request.path, request.query), init);
      if (response.ok && request.stream) {
        // The body streams on: the caller's signal still aborts it, the attempt's timer no more.
        streaming = true;
        return response;
      }
      if (response.ok) {
        // Read the body within the attempt's timeout, then hand back a response over it.
        const text = await response.text();
        return new Response(text, { status: response.status, headers: response.headers });
      }
      const text = await response.text().catch(() => "");
      throw errorFromResponse(response.status, response.headers, text);
    } catch (e) {
      if (e instanceof CommerceError) throw e;
      if (signal?.aborted) throw signal.reason;
      if (timedOut) {
        throw new CommerceError({
          code: "DEADLINE_EXCEEDED",
          message: `no answer from ${request.method} ${request.path} within ${Math.round(budget)} ms`,
          cause: e,
        });
      }
      throw new CommerceError({
        code: "UNAVAILABLE",
        message: `${request.method} ${request.path} failed: ${e instanceof Error ? e.message : String(e)}`,
        cause: e,
      });
    } finally {
      clearTimeout(timer);
      if (!streaming) signal?.removeEventListener("abort", onAbort);
    }
  }

  /** A JSON call: the parsed body of the successful answer. */
  async json<T>(request: Request, options?: CallOptions): Promise<T> {
    const response = await this.send(request, options);
    const text = await response.text();
    return (text ? JSON.parse(text) : {}) as T;
  }
}
