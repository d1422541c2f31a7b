/** Turning `track(event, properties, options)` into the Event JSON the server takes. */

import type { EventJson } from "./gen/analytics/ingest/v1/ingest_pb.js";
import { CommerceError } from "./errors.js";
import type { Visitor } from "./identity.js";
import { LIBRARY_NAME, VERSION, newEventId, pythonJsonLength, utf8Length } from "./runtime.js";

/** An event's properties: JSON values (amounts are integers in minor units). */
export type Properties = Record<string, unknown>;

/** Where an event happened: ip, userAgent, page, referrer, campaign, locale, library... */
export type EventContext = Record<string, unknown>;

/**
 * The event's top-level fields; each wins over the same key found in the properties. An event
 * naming a `userId` or an `anonymousId` (here or in its properties) is sent with its own ids only;
 * one naming neither gets the client's (docs/clients.md, "Identity").
 */
export interface EventOptions {
  /** The event's id; by default the SDK makes one (`evt_` + 32 hex digits). */
  id?: string;
  userId?: string;
  anonymousId?: string;
  sessionId?: string;
  /** When it happened (a Date or RFC 3339 text); default: the time of the call. */
  timestamp?: Date | string | number;
  /** The event's context; `library` is set to the SDK's unless given. */
  context?: EventContext;
}

/**
 * The limit the server puts on an event's properties and context together (docs/semantics.md),
 * in characters of Python's `json.dumps` (non-ASCII characters count 6).
 */
export const MAX_EVENT_BYTES = 32 * 1024;

/** Keys of the properties lifted to the event's top level (docs/clients.md, "Calls"). */
const LIFTED = ["userId", "anonymousId", "sessionId", "timestamp", "context"] as const;

/** An event ready to send: its JSON without `sentAt` (stamped per attempt) and its size. */
export interface PreparedEvent {
  id: string;
  /** The Event JSON, `{"id":...}`, without `sentAt`. */
  json: string;
  /** UTF-8 bytes of `json`. */
  bytes: number;
}

function timestampText(value: unknown): unknown {
  if (value instanceof Date) return value.toISOString();
  if (typeof value === "number" && Number.isFinite(value)) return new Date(value).toISOString();
  return value;
}

function stringify(value: unknown, field: string): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (e) {
    throw new CommerceError({
      code: "INVALID_ARGUMENT",
      message: `${field}: not representable as JSON (${e instanceof Error ? e.message : String(e)})`,
      fieldViolations: [{ field, description: "must be representable as JSON" }],
      cause: e,
    });
  }
  return json ?? "null";
}

/** An id the caller gave (an empty one is none). */
function given(value: unknown): boolean {
  return value !== undefined && value !== null && value !== "";
}

/**
 * Validates an event's size, assigns its id and timestamp, lifts the top-level keys, and gives
 * an event that names neither a userId nor an anonymousId the `visitor`'s.
 */
export function prepareEvent(
  event: string,
  properties?: Properties,
  options: EventOptions = {},
  visitor?: Visitor,
): PreparedEvent {
  if (typeof event !== "string" || event === "") {
    throw new CommerceError({
      code: "INVALID_ARGUMENT",
      message: "event: the event's name is required",
      fieldViolations: [{ field: "event", description: "is required" }],
    });
  }
  const props: Properties = { ...(properties ?? {}) };
  const lifted: Record<string, unknown> = {};
  for (const key of LIFTED) {
    if (key in props) {
      lifted[key] = props[key];
      delete props[key];
    }
  }
  const id = options.id ?? newEventId();
  let userId = options.userId ?? lifted.userId;
  let anonymousId = options.anonymousId ?? lifted.anonymousId;
  if (visitor && !given(userId) && !given(anonymousId)) {
    // The client's ids, both, only for an event that names none: never mixed with the caller's.
    userId = visitor.userId;
    anonymousId = visitor.anonymousId;
  }
  const sessionId = options.sessionId ?? lifted.sessionId;
  const timestamp = timestampText(options.timestamp ?? lifted.timestamp ?? new Date());
  let context = options.context ?? lifted.context ?? {};
  if (context && typeof context === "object" && !Array.isArray(context) && !("library" in context)) {
    context = { ...(context as EventContext), library: { name: LIBRARY_NAME, version: VERSION } };
  }
  const propsJson = stringify(props, "properties");
  const contextJson = stringify(context, "context");
  // Measured as the server measures it (Python's json.dumps), not in UTF-8 bytes.
  const size = pythonJsonLength(propsJson) + pythonJsonLength(contextJson);
  if (size > MAX_EVENT_BYTES) {
    throw new CommerceError({
      code: "EVENT_TOO_LARGE",
      message: `event ${event}: ${size} bytes of properties and context, over the ${MAX_EVENT_BYTES} the server accepts`,
      fieldViolations: [{ field: "properties", description: `event must be at most ${MAX_EVENT_BYTES} bytes` }],
    });
  }
  let json = `{"id":${stringify(id, "id")},"event":${stringify(event, "event")}`;
  if (userId !== undefined) json += `,"userId":${stringify(userId, "userId")}`;
  if (anonymousId !== undefined) json += `,"anonymousId":${stringify(anonymousId, "anonymousId")}`;
  if (sessionId !== undefined) json += `,"sessionId":${stringify(sessionId, "sessionId")}`;
  json += `,"timestamp":${stringify(timestamp, "timestamp")},"properties":${propsJson},"context":${contextJson}}`;
  return { id: String(id), json, bytes: utf8Length(json) };
}

/** Bytes `withSentAt` adds to an event (`"sentAt":"2024-01-15T10:35:00.000Z",`). */
export const SENT_AT_BYTES = 36;

/** The event's JSON with `sentAt` stamped (the server corrects the client's clock with it). */
export function withSentAt(json: string, sentAt: string): string {
  return `{"sentAt":"${sentAt}",` + json.slice(1);
}

/** The Event JSON an event was sent as (for callbacks). */
export function parseEvent(json: string): EventJson {
  return JSON.parse(json) as EventJson;
}
