/** `new Commerce({ apiKey, baseUrl })`: the SDK's entry point. */

import type { EventJson } from "./gen/analytics/ingest/v1/ingest_pb.js";
import { Analytics } from "./analytics.js";
import { Identity, checkId } from "./identity.js";
import type { CommerceError } from "./errors.js";
import type { DeliveredEvent, FlushResult, StorageLike } from "./queue.js";
import { fnv1a, inBrowser } from "./runtime.js";
import { type FetchLike, Transport } from "./transport.js";

export interface CommerceOptions {
  /** An API key with the scopes the calls need (`ingest` to track, `read` for the rest). */
  apiKey: string;
  /** The REST gateway, e.g. `https://analytics.example.com`; default `http://127.0.0.1:8080`. */
  baseUrl?: string;
  /** The fetch to use (default the global one): proxies, instrumentation, tests. */
  fetch?: FetchLike;
  /** Timeout of each attempt of a call, ms (default 10,000). */
  timeoutMs?: number;
  /** Retries of a retryable failure (default 5; 0: none). */
  maxRetries?: number;
  /** Backoff bounds, ms (defaults 100 and 10,000). */
  minBackoffMs?: number;
  maxBackoffMs?: number;

  /** Batching: send when this many events are queued (default 100, at most 1,000). */
  flushAt?: number;
  /** Batching: send what is queued this often, ms (default 5,000; 2,000 in browsers). */
  flushIntervalMs?: number;
  /** Batching: the largest batch request, bytes of JSON (default 450 KB). */
  maxBatchBytes?: number;
  /** Batching: the queue's bounds (defaults 10,000 events, 10 MB); beyond, enqueue throws QUEUE_FULL. */
  maxQueueEvents?: number;
  maxQueueBytes?: number;
  /** How long `close()` waits by default, ms (default 10,000). */
  closeTimeoutMs?: number;
  /** Called with the events the server stored, once per batch. Exceptions are ignored. */
  onSuccess?: (events: DeliveredEvent[]) => void;
  /**
   * Called with events that will not be delivered and why: refused by the server (one call per
   * event, the error's `fieldViolations` naming the field), their batch failed for good, or
   * `close` gave up on them (`CLOSED`). Exceptions are ignored.
   */
  onFailure?: (events: EventJson[], error: CommerceError) => void;

  /**
   * `'localStorage'`: the unsent queue is kept in `storage` (default `globalThis.localStorage`)
   * and sent by the next client over it (after a reload); default `'none'`.
   */
  persistence?: "localStorage" | "none";
  /** The Storage persistence uses (any object with getItem, setItem, removeItem). */
  storage?: StorageLike;
  /** The storage key; default `cartlytics:queue:` + a hash of the base URL and key. */
  storageKey?: string;

  /**
   * The client's anonymousId (at most 256 characters): events naming no visitor carry it
   * (docs/clients.md, "Identity"). Default: the one kept in the storage (persistence on), else a
   * new random UUID v4.
   */
  anonymousId?: string;
  /** Where the visitor is kept with persistence; default `cartlytics:identity:` + the same hash. */
  identityStorageKey?: string;
}

function positive(value: number | undefined, fallback: number, name: string, allowZero = false): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || Number.isNaN(value) || value < 0 || (!allowZero && value === 0)) {
    throw new TypeError(`Commerce: ${name} must be a ${allowZero ? "non-negative" : "positive"} number`);
  }
  return value;
}

function defaultStorage(): StorageLike | undefined {
  try {
    const storage = (globalThis as { localStorage?: StorageLike }).localStorage;
    return storage ?? undefined;
  } catch {
    return undefined; // e.g. a sandboxed frame: persistence off
  }
}

export class Commerce {
  /** Tracking and every read endpoint. */
  readonly analytics: Analytics;

  constructor(options: CommerceOptions) {
    if (!options || typeof options.apiKey !== "string" || options.apiKey === "") {
      throw new TypeError("Commerce: apiKey is required");
    }
    const fetchImpl: FetchLike | undefined =
      options.fetch ??
      (typeof globalThis.fetch === "function" ? (input, init) => globalThis.fetch(input, init) : undefined);
    if (!fetchImpl) throw new TypeError("Commerce: no fetch in this runtime; pass options.fetch");
    const baseUrl = options.baseUrl ?? "http://127.0.0.1:8080";
    const transport = new Transport({
      apiKey: options.apiKey,
      baseUrl,
      fetch: fetchImpl,
      timeoutMs: positive(options.timeoutMs, 10_000, "timeoutMs"),
      maxRetries: Math.floor(positive(options.maxRetries, 5, "maxRetries", true)),
      minBackoffMs: positive(options.minBackoffMs, 100, "minBackoffMs", true),
      maxBackoffMs: positive(options.maxBackoffMs, 10_000, "maxBackoffMs", true),
    });
    const browser = inBrowser();
    const storage =
      options.persistence === "localStorage" ? (options.storage ?? defaultStorage()) : undefined;
    if (options.anonymousId !== undefined) checkId("Commerce: anonymousId", options.anonymousId);
    const hash = fnv1a(baseUrl + "\n" + options.apiKey);
    const identity = new Identity(storage, options.identityStorageKey ?? `cartlytics:identity:${hash}`, options.anonymousId);
    this.analytics = new Analytics(transport, {
      flushAt: Math.min(1000, Math.floor(positive(options.flushAt, 100, "flushAt"))),
      flushIntervalMs: positive(options.flushIntervalMs, browser ? 2_000 : 5_000, "flushIntervalMs"),
      maxBatchBytes: positive(options.maxBatchBytes, 450 * 1024, "maxBatchBytes"),
      maxQueueEvents: positive(options.maxQueueEvents, 10_000, "maxQueueEvents"),
      maxQueueBytes: positive(options.maxQueueBytes, 10 * 1024 * 1024, "maxQueueBytes"),
      closeTimeoutMs: positive(options.closeTimeoutMs, 10_000, "closeTimeoutMs", true),
      keepaliveBatchBytes: 60 * 1024,
      onSuccess: options.onSuccess,
      onFailure: options.onFailure,
      storage,
      storageKey: options.storageKey ?? `cartlytics:queue:${hash}`,
      pageHide: browser,
    }, identity);
  }

  /** `commerce.analytics.flush(options)`. */
  flush(options?: { timeoutMs?: number }): Promise<FlushResult> {
    return this.analytics.flush(options);
  }

  /** `commerce.analytics.close(options)`. */
  close(options?: { timeoutMs?: number }): Promise<FlushResult> {
    return this.analytics.close(options);
  }
}
