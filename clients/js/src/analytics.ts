/** `commerce.analytics`: tracking (awaited and batched) and every read endpoint. */

import type { ExportDataRequestJson } from "./gen/analytics/export/v1/export_pb.js";
import type { TrackEventResponseJson } from "./gen/analytics/ingest/v1/ingest_pb.js";
import type {
  GetCustomersRequestJson,
  GetCustomersResponseJson,
  GetFunnelRequestJson,
  GetFunnelResponseJson,
  GetProductsRequestJson,
  GetProductsResponseJson,
  GetRealtimeRequestJson,
  GetRealtimeResponseJson,
  GetSalesRequestJson,
  GetSalesResponseJson,
  RunQueryRequestJson,
  RunQueryResponseJson,
} from "./gen/analytics/metrics/v1/metrics_pb.js";
import { CommerceError } from "./errors.js";
import { type EventOptions, type Properties, prepareEvent, withSentAt } from "./events.js";
import { Identity } from "./identity.js";
import { EventQueue, type FlushResult, type QueueConfig } from "./queue.js";
import type { CallOptions, Transport } from "./transport.js";

export type SalesParams = GetSalesRequestJson;
export type ProductsParams = GetProductsRequestJson;
export type CustomersParams = GetCustomersRequestJson;
/** `steps` as a list, or comma-separated. */
export type FunnelParams = Omit<GetFunnelRequestJson, "steps"> & { steps?: string[] | string };
export type RealtimeParams = GetRealtimeRequestJson;
export type QueryParams = RunQueryRequestJson;
/** `type` is required: orders, order_items, events, products or customers. */
export type ExportParams = ExportDataRequestJson & { type: string };

/** Options of `track`: the event's top-level fields and the call's signal and deadline. */
export type TrackOptions = EventOptions & CallOptions;

export interface ExportOptions extends CallOptions {
  /**
   * Called with each chunk of the file, in order; the export resolves (with an ExportSummary)
   * once the last chunk was handled. A returned promise is awaited before the next chunk.
   */
  onChunk?: (chunk: Uint8Array) => void | Promise<void>;
}

/** A started export: the file's body still to read. */
export interface ExportResult {
  /** The format's media type (`text/csv`, `application/x-ndjson`, ...). */
  contentType: string;
  /** From Content-Disposition (`orders_30d.csv`); "" when the browser is not shown the header. */
  filename: string;
  /** The file as it streams in (read it once: with a reader, `text()` or `bytes()`). */
  body: ReadableStream<Uint8Array>;
  /** Reads the whole body as UTF-8 text. */
  text(): Promise<string>;
  /** Reads the whole body. */
  bytes(): Promise<Uint8Array>;
}

/** A finished export whose chunks went to `onChunk`. */
export interface ExportSummary {
  contentType: string;
  filename: string;
  /** Bytes passed to onChunk. */
  size: number;
}

function filenameOf(disposition: string | null): string {
  if (!disposition) return "";
  const star = /filename\*\s*=\s*(?:UTF-8'')?([^;]+)/i.exec(disposition);
  if (star) {
    try {
      return decodeURIComponent(star[1]!.trim().replace(/^"|"$/g, ""));
    } catch {
      /* fall through */
    }
  }
  const plain = /filename\s*=\s*("([^"]*)"|[^;]+)/i.exec(disposition);
  return plain ? (plain[2] ?? plain[1]!).trim() : "";
}

async function readAll(body: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.byteLength;
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.byteLength;
  }
  return out;
}

function streamError(e: unknown): unknown {
  if (e instanceof CommerceError || (e instanceof Error && e.name === "AbortError")) return e;
  return new CommerceError({
    code: "UNAVAILABLE",
    message: `the export stopped: ${e instanceof Error ? e.message : String(e)}`,
    cause: e,
  });
}

export class Analytics {
  private readonly queue: EventQueue;

  /** @internal Made by `Commerce`. */
  constructor(
    private readonly transport: Transport,
    queueConfig: QueueConfig,
    private readonly identity: Identity,
  ) {
    this.queue = new EventQueue(transport, queueConfig);
  }

  /**
   * Makes `userId` the client's user: every later `track` / `enqueue` whose event names neither a
   * userId nor an anonymousId carries both `userId` and the client's `anonymousId`, which is how
   * the server links the anonymousId to the user (the first link of an anonymousId wins). Sends
   * nothing; events already queued keep their ids. Throws a TypeError for an empty id or one over
   * 256 characters. With `persistence: 'localStorage'` the user is kept in the storage.
   */
  identify(userId: string): void {
    this.identity.identify(userId);
  }

  /**
   * Sign-out: forgets the user and starts a new random anonymousId (as Segment's analytics.js
   * `reset()`); later events carry only the new anonymousId. Sends nothing; queued events keep
   * their ids.
   */
  reset(): void {
    this.identity.reset();
  }

  /** The client's anonymousId: the `anonymousId` option, else a UUID v4 (kept in the storage with persistence). */
  get anonymousId(): string {
    return this.identity.current().anonymousId;
  }

  /** The user of the last `identify`; undefined before one or after `reset`. */
  get userId(): string | undefined {
    return this.identity.current().userId;
  }

  /**
   * Sends one event and resolves once the server stored it, with its id, name and timestamp.
   * `userId`, `anonymousId`, `sessionId`, `timestamp` and `context` found in the properties are
   * sent as the event's own fields. Retried by the rules of docs/clients.md with the same id.
   */
  async track(event: string, properties?: Properties, options: TrackOptions = {}): Promise<TrackEventResponseJson> {
    if (this.queue.closed) throw EventQueue.closedError();
    const prepared = prepareEvent(event, properties, options, this.identity.current());
    return this.transport.json<TrackEventResponseJson>(
      {
        method: "POST",
        path: "/analytics/event",
        body: () => withSentAt(prepared.json, new Date().toISOString()),
      },
      options,
    );
  }

  /**
   * Queues one event for the background sender and returns its id at once. Throws a
   * CommerceError (nothing queued) with code `QUEUE_FULL` (the queue holds `maxQueueEvents`
   * events or `maxQueueBytes`), `EVENT_TOO_LARGE` (properties and context over 32 KB of JSON)
   * or `CLOSED` (after `close`). Its outcome goes to `onSuccess` / `onFailure`.
   */
  enqueue(event: string, properties?: Properties, options?: EventOptions): string {
    if (this.queue.closed) throw EventQueue.closedError();
    return this.queue.enqueue(event, properties, options, this.identity.current());
  }

  /**
   * Delivers every event queued before the call; resolves when each has succeeded or failed, or
   * when `timeoutMs` passed (`pending` then counts those still under way).
   */
  flush(options: { timeoutMs?: number } = {}): Promise<FlushResult> {
    return this.queue.flush(options.timeoutMs);
  }

  /**
   * Stops accepting events (a later `enqueue` or `track` throws `CLOSED`), delivers the queue,
   * waits up to `timeoutMs` (default the client's `closeTimeoutMs`, 10 s); events still
   * undelivered then go to `onFailure` with a `CLOSED` error and are counted in `pending`.
   */
  close(options: { timeoutMs?: number } = {}): Promise<FlushResult> {
    return this.queue.close(options.timeoutMs);
  }

  /** Events queued or being sent. */
  get queuedEvents(): number {
    return this.queue.size;
  }

  /** `GET /analytics/sales`: revenue, orders, average order value, growth and series. */
  getSales(params: SalesParams = {}, options?: CallOptions): Promise<GetSalesResponseJson> {
    return this.transport.json({ method: "GET", path: "/analytics/sales", query: { ...params } }, options);
  }

  /** `GET /analytics/products`: the top sellers. */
  getProducts(params: ProductsParams = {}, options?: CallOptions): Promise<GetProductsResponseJson> {
    return this.transport.json({ method: "GET", path: "/analytics/products", query: { ...params } }, options);
  }

  /** `GET /analytics/customers`: totals, new and returning customers, top customers. */
  getCustomers(params: CustomersParams = {}, options?: CallOptions): Promise<GetCustomersResponseJson> {
    return this.transport.json({ method: "GET", path: "/analytics/customers", query: { ...params } }, options);
  }

  /** `GET /analytics/funnel`: each step's visitors and rate. */
  getFunnel(params: FunnelParams = {}, options?: CallOptions): Promise<GetFunnelResponseJson> {
    const { steps, ...rest } = params;
    const list = typeof steps === "string" ? [steps] : steps;
    return this.transport.json(
      { method: "GET", path: "/analytics/funnel", query: { ...rest, steps: list } },
      options,
    );
  }

  /** `GET /analytics/realtime`: active visitors, today's orders and revenue, top pages. */
  getRealtime(params: RealtimeParams = {}, options?: CallOptions): Promise<GetRealtimeResponseJson> {
    return this.transport.json({ method: "GET", path: "/analytics/realtime", query: { ...params } }, options);
  }

  /** `POST /analytics/query`: a custom query (docs/query.md); `rows` carry each name requested. */
  query(params: QueryParams, options?: CallOptions): Promise<RunQueryResponseJson> {
    const body = JSON.stringify(params);
    return this.transport.json({ method: "POST", path: "/analytics/query", body: () => body }, options);
  }

  /**
   * `GET /analytics/export`, streamed: resolves once the server answered, with the body to read
   * (`result.body`, `result.text()`, `result.bytes()`); with `onChunk`, resolves once every chunk
   * was handed to it. Retried only before the file starts; a failure while it streams errors the
   * stream (an `UNAVAILABLE` CommerceError with `onChunk`).
   */
  export(params: ExportParams, options: ExportOptions & { onChunk: NonNullable<ExportOptions["onChunk"]> }): Promise<ExportSummary>;
  export(params: ExportParams, options?: ExportOptions): Promise<ExportResult>;
  async export(params: ExportParams, options: ExportOptions = {}): Promise<ExportResult | ExportSummary> {
    const response = await this.transport.send(
      { method: "GET", path: "/analytics/export", query: { ...params }, stream: true },
      options,
    );
    const contentType = response.headers.get("content-type") ?? "";
    const filename = filenameOf(response.headers.get("content-disposition"));
    const body = response.body ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() });
    const onChunk = options.onChunk;
    if (onChunk) {
      const reader = body.getReader();
      let size = 0;
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          size += value.byteLength;
          await onChunk(value);
        }
      } catch (e) {
        reader.cancel().catch(() => undefined);
        throw streamError(e);
      }
      return { contentType, filename, size };
    }
    const bytes = async () => {
      try {
        return await readAll(body);
      } catch (e) {
        throw streamError(e);
      }
    };
    return {
      contentType,
      filename,
      body,
      bytes,
      text: async () => new TextDecoder().decode(await bytes()),
    };
  }
}
