/** The batching mode (docs/clients.md, "Batching mode" and "Browsers"). */

import type { BatchTrackEventsResponseJson, EventJson } from "./gen/analytics/ingest/v1/ingest_pb.js";
import { CommerceError } from "./errors.js";
import type { Visitor } from "./identity.js";
import { type EventOptions, type Properties, SENT_AT_BYTES, parseEvent, prepareEvent, withSentAt } from "./events.js";
import { type Timer, inBrowser, sleep, unrefTimer, utf8Length } from "./runtime.js";
import { type Transport, retryable } from "./transport.js";

/** The minimal Web Storage the persistence uses (`localStorage`, or any object like it). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** What `flush` / `close` did with the events queued before the call. */
export interface FlushResult {
  /** Stored by the server. */
  delivered: number;
  /** Reported to onFailure (refused, failed for good, or given up by close). */
  failed: number;
  /** Still under way when the timeout passed (always 0 after close: those count as failed). */
  pending: number;
}

/** An event the server stored (onSuccess). */
export interface DeliveredEvent {
  id: string;
  event: string;
  /** As stored (RFC 3339, UTC, clock skew corrected). */
  timestamp: string;
  /** The event as it was sent (without sentAt). */
  source: EventJson;
}

export interface QueueConfig {
  flushAt: number;
  flushIntervalMs: number;
  maxBatchBytes: number;
  maxQueueEvents: number;
  maxQueueBytes: number;
  closeTimeoutMs: number;
  keepaliveBatchBytes: number;
  onSuccess?: (events: DeliveredEvent[]) => void;
  onFailure?: (events: EventJson[], error: CommerceError) => void;
  storage?: StorageLike;
  storageKey: string;
  /** Listen to page hide (browsers). */
  pageHide: boolean;
}

/** The server's batch limit (events per request). */
const MAX_BATCH_EVENTS = 1000;
/** `{"events":[` and `]}` */
const BATCH_OVERHEAD = 13;

interface Item {
  seq: number;
  id: string;
  json: string;
  bytes: number;
  state: "queued" | "sending" | "done";
  outcome?: "delivered" | "failed";
}

interface Waiter {
  maxSeq: number;
  resolve: () => void;
}

/** Rejected by a batch because another request is storing the same id: retry it. */
function inFlight(field: string | undefined, description: string | undefined): boolean {
  return field === "id" && /being stored|retry/i.test(description ?? "");
}

export class EventQueue {
  closed = false;
  private items: Item[] = []; // every event not yet done, by seq
  private bytes = 0;
  private queuedCount = 0; // items in state "queued"
  private queuedBytes = 0; // their batch bytes (each with sentAt and a comma)
  private seq = 0;
  private flushUpTo = 0; // events up to this seq go out whatever flushAt says
  private timer: Timer | undefined;
  private pumping = false;
  private waiters: Waiter[] = [];
  private dropped = new Set<string>(); // ids to remove from the storage at its next write
  private persistScheduled = false;
  private readonly unlisten: () => void;

  static closedError(): CommerceError {
    return new CommerceError({ code: "CLOSED", message: "the client is closed" });
  }

  constructor(private readonly transport: Transport, private readonly config: QueueConfig) {
    this.restore();
    this.unlisten = config.pageHide ? this.listenToPageHide() : () => undefined;
  }

  get size(): number {
    return this.items.length;
  }

  enqueue(event: string, properties?: Properties, options?: EventOptions, visitor?: Visitor): string {
    if (this.closed) throw EventQueue.closedError();
    const prepared = prepareEvent(event, properties, options, visitor);
    if (this.items.length >= this.config.maxQueueEvents || this.bytes + prepared.bytes > this.config.maxQueueBytes) {
      throw new CommerceError({
        code: "QUEUE_FULL",
        message: `the queue is full (${this.items.length} events, ${this.bytes} bytes)`,
      });
    }
    this.add(prepared.id, prepared.json, prepared.bytes);
    this.schedulePersist();
    this.kick();
    return prepared.id;
  }

  private add(id: string, json: string, bytes: number): Item {
    const item: Item = { seq: ++this.seq, id, json, bytes, state: "sending" };
    this.items.push(item);
    this.bytes += bytes;
    this.setState(item, "queued");
    return item;
  }

  private setState(item: Item, state: Item["state"]): void {
    const size = item.bytes + SENT_AT_BYTES + 1;
    if (item.state === "queued") {
      this.queuedCount--;
      this.queuedBytes -= size;
    }
    if (state === "queued") {
      this.queuedCount++;
      this.queuedBytes += size;
    }
    item.state = state;
  }

  /** Whether a batch should go now. */
  private due(): boolean {
    if (this.queuedCount === 0) return false;
    if (this.queuedCount >= this.config.flushAt) return true;
    if (this.queuedBytes + BATCH_OVERHEAD > this.config.maxBatchBytes) return true;
    const first = this.items.find((item) => item.state === "queued");
    return first !== undefined && first.seq <= this.flushUpTo;
  }

  /** Starts the sender when a batch is due, else makes sure the interval timer runs. */
  private kick(): void {
    if (this.queuedCount === 0) return;
    if (this.due()) {
      void this.pump();
    } else if (this.timer === undefined && !this.closed) {
      this.timer = unrefTimer(() => {
        this.timer = undefined;
        this.flushUpTo = this.seq;
        this.kick();
      }, this.config.flushIntervalMs);
    }
  }

  /** Sends due batches one at a time, oldest first. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.due()) {
        const queued = this.items.filter((item) => item.state === "queued");
        await this.deliver(this.take(queued, Math.min(this.config.flushAt, MAX_BATCH_EVENTS), this.config.maxBatchBytes), false);
      }
    } finally {
      this.pumping = false;
    }
    this.kick();
  }

  /** The first events of `queued` that fit in one batch (at least one). */
  private take(queued: Item[], maxEvents: number, maxBytes: number): Item[] {
    const batch: Item[] = [];
    let bytes = BATCH_OVERHEAD;
    for (const item of queued) {
      const size = item.bytes + SENT_AT_BYTES + 1;
      if (batch.length >= maxEvents || (batch.length > 0 && bytes + size > maxBytes)) break;
      batch.push(item);
      bytes += size;
    }
    return batch;
  }

  /**
   * Sends one batch and settles its events. With `keepalive` (page hide): one attempt, and a
   * retryable failure puts the events back in the queue instead of failing them.
   */
  private async deliver(batch: Item[], keepalive: boolean): Promise<void> {
    for (const item of batch) this.setState(item, "sending");
    let remaining = batch;
    let attempts = 0; // one retry budget for the batch: its requests and its in-flight re-sends
    const maxRetries = keepalive ? 0 : this.transport.config.maxRetries;
    for (;;) {
      const sending = remaining;
      let answer: BatchTrackEventsResponseJson;
      try {
        answer = await this.transport.json<BatchTrackEventsResponseJson>({
          method: "POST",
          path: "/analytics/event/batch",
          body: () => {
            const sentAt = new Date().toISOString();
            return `{"events":[${sending.map((item) => withSentAt(item.json, sentAt)).join(",")}]}`;
          },
          keepalive,
          maxRetries: Math.max(0, maxRetries - attempts),
          onAttempt: () => attempts++,
        });
      } catch (e) {
        const error =
          e instanceof CommerceError
            ? e
            : new CommerceError({ code: "UNKNOWN", message: e instanceof Error ? e.message : String(e), cause: e });
        if (keepalive && retryable(error)) {
          this.requeue(sending);
        } else {
          // Answered for good (4xx, 500): the storage forgets them; else a reload sends them again.
          this.fail(sending, error, error.status > 0 && !retryable(error));
        }
        return;
      }
      const accepted: DeliveredEvent[] = [];
      const acceptedItems: Item[] = [];
      const seen = new Set<number>();
      for (const a of answer.accepted ?? []) {
        const item = sending[a.index ?? 0];
        if (!item || seen.has(a.index ?? 0)) continue;
        seen.add(a.index ?? 0);
        acceptedItems.push(item);
        accepted.push({
          id: a.id ?? item.id,
          event: a.event ?? "",
          timestamp: a.timestamp ?? "",
          source: undefined as unknown as EventJson,
        });
      }
      this.succeed(acceptedItems, accepted);
      const refused = new Map<number, { field: string; description: string }[]>();
      for (const r of answer.rejected ?? []) {
        const index = r.index ?? 0;
        if (seen.has(index) || !sending[index]) continue;
        const list = refused.get(index) ?? [];
        list.push({ field: r.field ?? "", description: r.description ?? "" });
        refused.set(index, list);
      }
      const again: Item[] = [];
      for (const [index, violations] of refused) {
        seen.add(index);
        const item = sending[index]!;
        if (violations.every((v) => inFlight(v.field, v.description))) {
          again.push(item);
          continue;
        }
        const message = violations.map((v) => `${v.field}: ${v.description}`).join("; ");
        this.fail(
          [item],
          new CommerceError({ code: "INVALID_ARGUMENT", status: 400, message, fieldViolations: violations }),
          true,
        );
      }
      const unanswered = sending.filter((_, index) => !seen.has(index));
      if (unanswered.length) {
        this.fail(
          unanswered,
          new CommerceError({ code: "INTERNAL", status: 200, message: "the server did not answer for this event" }),
          false,
        );
      }
      if (again.length === 0) return;
      if (keepalive || attempts > maxRetries) {
        if (keepalive) {
          this.requeue(again);
        } else {
          this.fail(again, new CommerceError({ code: "ABORTED", status: 409, message: "id: being stored by another request" }), false);
        }
        return;
      }
      remaining = again;
      await sleep(this.transport.backoff(attempts));
    }
  }

  /** Puts events a keepalive request could not deliver back in the queue. */
  private requeue(items: Item[]): void {
    for (const item of items) if (item.state === "sending") this.setState(item, "queued");
    this.kick();
  }

  private succeed(items: Item[], accepted: DeliveredEvent[]): void {
    const onSuccess = this.config.onSuccess;
    const live: DeliveredEvent[] = [];
    items.forEach((item, i) => {
      if (item.state === "done") return; // given up by close meanwhile
      this.settle(item, "delivered", true);
      const event = accepted[i]!;
      if (onSuccess) event.source = parseEvent(item.json);
      live.push(event);
    });
    if (live.length === 0) return;
    if (onSuccess) this.callback(() => onSuccess(live));
    this.afterSettle();
  }

  private fail(items: Item[], error: CommerceError, forget: boolean): void {
    const live = items.filter((item) => item.state !== "done");
    if (live.length === 0) return;
    for (const item of live) this.settle(item, "failed", forget);
    const onFailure = this.config.onFailure;
    if (onFailure) this.callback(() => onFailure(live.map((item) => parseEvent(item.json)), error));
    this.afterSettle();
  }

  private settle(item: Item, outcome: "delivered" | "failed", forget: boolean): void {
    this.setState(item, "done");
    item.outcome = outcome;
    this.bytes -= item.bytes;
    if (forget && this.config.storage) this.dropped.add(item.id);
  }

  /** A callback's exception never stops the sender. */
  private callback(fn: () => void): void {
    try {
      fn();
    } catch {
      /* the application's bug; the queue carries on */
    }
  }

  private afterSettle(): void {
    this.items = this.items.filter((item) => item.state !== "done");
    this.schedulePersist();
    const first = this.items.length ? this.items[0]!.seq : Infinity;
    const ready = this.waiters.filter((w) => w.maxSeq < first);
    if (ready.length) {
      this.waiters = this.waiters.filter((w) => w.maxSeq >= first);
      for (const w of ready) w.resolve();
    }
  }

  async flush(timeoutMs?: number): Promise<FlushResult> {
    const target = this.items.slice();
    if (target.length === 0) return { delivered: 0, failed: 0, pending: 0 };
    const maxSeq = target[target.length - 1]!.seq;
    this.flushUpTo = Math.max(this.flushUpTo, maxSeq);
    await new Promise<void>((resolve) => {
      let timer: Timer | undefined;
      const waiter: Waiter = {
        maxSeq,
        resolve: () => {
          if (timer !== undefined) clearTimeout(timer);
          resolve();
        },
      };
      this.waiters.push(waiter);
      if (timeoutMs !== undefined && Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          resolve();
        }, Math.max(0, timeoutMs));
      }
      this.kick();
    });
    return {
      delivered: target.filter((item) => item.outcome === "delivered").length,
      failed: target.filter((item) => item.outcome === "failed").length,
      pending: target.filter((item) => item.state !== "done").length,
    };
  }

  async close(timeoutMs?: number): Promise<FlushResult> {
    this.closed = true;
    this.unlisten();
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    const target = this.items.slice();
    await this.flush(timeoutMs ?? this.config.closeTimeoutMs);
    const left = this.items.filter((item) => item.state !== "done");
    if (left.length) {
      // Kept in the storage (if any): a later client over it sends them again.
      this.fail(left, new CommerceError({ code: "CLOSED", message: "close gave up on this event (timeout)" }), false);
    }
    this.persistNow();
    return {
      delivered: target.filter((item) => item.outcome === "delivered").length,
      failed: target.filter((item) => item.outcome === "failed").length,
      pending: 0,
    };
  }

  // ---- browsers: page hide ----

  private listenToPageHide(): () => void {
    if (!inBrowser()) return () => undefined;
    type Target = { addEventListener(type: string, fn: () => void): void; removeEventListener(type: string, fn: () => void): void };
    const g = globalThis as unknown as { window: Target; document: Target & { visibilityState?: string } };
    const { window, document } = g;
    const onVisibility = () => {
      if (document.visibilityState === "hidden") this.sendOnHide();
    };
    const onPageHide = () => this.sendOnHide();
    document.addEventListener("visibilitychange", onVisibility);
    window.addEventListener("pagehide", onPageHide);
    return () => {
      document.removeEventListener("visibilitychange", onVisibility);
      window.removeEventListener("pagehide", onPageHide);
    };
  }

  /** Sends every queued event with `fetch(..., {keepalive: true})`, each batch under 64 KB. */
  sendOnHide(): void {
    this.persistNow();
    let queued = this.items.filter((item) => item.state === "queued");
    while (queued.length) {
      const batch = this.take(queued, MAX_BATCH_EVENTS, this.config.keepaliveBatchBytes);
      queued = queued.slice(batch.length);
      void this.deliver(batch, true);
    }
  }

  // ---- opt-in persistence ----

  private readStored(): [string, string][] {
    const storage = this.config.storage;
    if (!storage) return [];
    try {
      const text = storage.getItem(this.config.storageKey);
      const parsed: unknown = text ? JSON.parse(text) : [];
      if (!Array.isArray(parsed)) return [];
      return parsed.filter(
        (e): e is [string, string] => Array.isArray(e) && typeof e[0] === "string" && typeof e[1] === "string",
      );
    } catch {
      return [];
    }
  }

  /** Queues the events a previous client left in the storage, to be sent at once. */
  private restore(): void {
    const stored = this.readStored();
    if (stored.length === 0) return;
    const have = new Set(this.items.map((item) => item.id));
    for (const [id, json] of stored) {
      if (have.has(id)) continue;
      have.add(id);
      this.add(id, json, utf8Length(json));
    }
    this.flushUpTo = this.seq;
    queueMicrotask(() => this.kick());
  }

  private schedulePersist(): void {
    if (!this.config.storage || this.persistScheduled) return;
    this.persistScheduled = true;
    queueMicrotask(() => this.persistNow());
  }

  /**
   * Writes the unsent events: the stored list (other tabs' events included) without the ids this
   * client has had answered, plus this client's own.
   */
  private persistNow(): void {
    this.persistScheduled = false;
    const storage = this.config.storage;
    if (!storage) return;
    const mine = new Map(this.items.map((item) => [item.id, item.json] as [string, string]));
    const next: [string, string][] = [];
    for (const entry of this.readStored()) {
      if (!this.dropped.has(entry[0]) && !mine.has(entry[0])) next.push(entry);
    }
    for (const entry of mine) next.push(entry);
    try {
      if (next.length) storage.setItem(this.config.storageKey, JSON.stringify(next));
      else storage.removeItem(this.config.storageKey);
      this.dropped.clear();
    } catch {
      /* full or forbidden storage: the queue in memory still works */
    }
  }
}
