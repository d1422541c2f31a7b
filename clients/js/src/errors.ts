/** The SDK's one error type (docs/clients.md, "Calls"). */

/** A field the server refused and the rule it broke (a google.rpc.BadRequest field violation). */
export interface FieldViolation {
  field: string;
  description: string;
}

/**
 * Canonical code names: the server's (google.rpc.Code names) and the SDK's own, which have
 * `status` 0 (nothing was sent): `QUEUE_FULL`, `EVENT_TOO_LARGE`, `CLOSED`.
 */
export type ErrorCode =
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED"
  | "QUEUE_FULL"
  | "EVENT_TOO_LARGE"
  | "CLOSED";

const CODE_NAMES: readonly ErrorCode[] = [
  "UNKNOWN", // 0 is OK; never an error
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

/** The code an HTTP status stands for when the body is not a google.rpc.Status. */
export function codeForStatus(status: number): ErrorCode {
  switch (status) {
    case 400:
    case 413:
    case 414:
    case 431:
      return "INVALID_ARGUMENT";
    case 401:
      return "UNAUTHENTICATED";
    case 403:
      return "PERMISSION_DENIED";
    case 404:
      return "NOT_FOUND";
    case 409:
      return "ABORTED";
    case 429:
      return "RESOURCE_EXHAUSTED";
    case 499:
      return "CANCELLED";
    case 501:
      return "UNIMPLEMENTED";
    case 502:
    case 503:
      return "UNAVAILABLE";
    case 504:
      return "DEADLINE_EXCEEDED";
    default:
      return status >= 500 ? "INTERNAL" : "UNKNOWN";
  }
}

export interface CommerceErrorInit {
  code: ErrorCode;
  message: string;
  status?: number;
  fieldViolations?: FieldViolation[];
  reason?: string;
  retryAfterMs?: number;
  details?: unknown[];
  requestId?: string;
  cause?: unknown;
}

/**
 * Every failure of the SDK: an answer of the server (its google.rpc.Status), a transport failure
 * (`UNAVAILABLE` / `DEADLINE_EXCEEDED` with `status` 0), or a refusal of the SDK itself
 * (`QUEUE_FULL`, `EVENT_TOO_LARGE`, `CLOSED`, `status` 0).
 */
export class CommerceError extends Error {
  /** The canonical code's name, e.g. `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`, `QUEUE_FULL`. */
  readonly code: ErrorCode;
  /** The HTTP status of the answer; 0 when there was none. */
  readonly status: number;
  /** The field violations of a google.rpc.BadRequest detail (may be empty). */
  readonly fieldViolations: FieldViolation[];
  /** The reason of a google.rpc.ErrorInfo detail (e.g. `RATE_LIMITED`), or "". */
  readonly reason: string;
  /** The server's retry delay (RetryInfo, else the Retry-After header), in ms, if it gave one. */
  readonly retryAfterMs: number | undefined;
  /** The raw details of the google.rpc.Status. */
  readonly details: unknown[];
  /** The `x-request-id` of the answer, if any. */
  readonly requestId: string | undefined;

  constructor(init: CommerceErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "CommerceError";
    this.code = init.code;
    this.status = init.status ?? 0;
    this.fieldViolations = init.fieldViolations ?? [];
    this.reason = init.reason ?? "";
    this.retryAfterMs = init.retryAfterMs;
    this.details = init.details ?? [];
    this.requestId = init.requestId;
  }
}

/** `"0.988885s"` (a google.protobuf.Duration in JSON) in ms. */
function durationMs(value: unknown): number | undefined {
  if (typeof value === "string") {
    const match = /^(-?\d+(?:\.\d+)?)s$/.exec(value.trim());
    if (match) return Math.max(0, Number(match[1]) * 1000);
  } else if (value && typeof value === "object") {
    const d = value as { seconds?: unknown; nanos?: unknown };
    const ms = Number(d.seconds ?? 0) * 1000 + Number(d.nanos ?? 0) / 1e6;
    if (Number.isFinite(ms)) return Math.max(0, ms);
  }
  return undefined;
}

/** `Retry-After` (seconds, or an HTTP date) in ms. */
export function retryAfterHeaderMs(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** The error an HTTP answer that is not a success is, from its google.rpc.Status body. */
export function errorFromResponse(status: number, headers: Headers, bodyText: string): CommerceError {
  let body: unknown;
  try {
    body = bodyText ? JSON.parse(bodyText) : undefined;
  } catch {
    body = undefined;
  }
  let code = codeForStatus(status);
  let message = `HTTP ${status}`;
  let reason = "";
  let retryInfoMs: number | undefined;
  const fieldViolations: FieldViolation[] = [];
  let details: unknown[] = [];
  if (body && typeof body === "object" && !Array.isArray(body)) {
    const s = body as { code?: unknown; message?: unknown; details?: unknown };
    if (typeof s.code === "number" && s.code > 0 && s.code < CODE_NAMES.length) {
      code = CODE_NAMES[s.code]!;
    } else if (typeof s.code === "string" && (CODE_NAMES as readonly string[]).includes(s.code)) {
      code = s.code as ErrorCode;
    }
    if (typeof s.message === "string" && s.message) message = s.message;
    if (Array.isArray(s.details)) {
      details = s.details;
      for (const detail of s.details) {
        if (!detail || typeof detail !== "object") continue;
        const d = detail as Record<string, unknown>;
        const type = typeof d["@type"] === "string" ? (d["@type"] as string) : "";
        if (type.endsWith("google.rpc.ErrorInfo") && typeof d.reason === "string") {
          reason = d.reason;
        } else if (type.endsWith("google.rpc.BadRequest") && Array.isArray(d.fieldViolations)) {
          for (const v of d.fieldViolations as Array<Record<string, unknown>>) {
            fieldViolations.push({
              field: String(v?.field ?? ""),
              description: String(v?.description ?? ""),
            });
          }
        } else if (type.endsWith("google.rpc.RetryInfo")) {
          retryInfoMs = durationMs(d.retryDelay);
        }
      }
    }
  } else if (bodyText && bodyText.length < 512) {
    message = `HTTP ${status}: ${bodyText.trim()}`;
  }
  const headerMs = retryAfterHeaderMs(headers.get("retry-after"));
  return new CommerceError({
    code,
    status,
    message,
    reason,
    fieldViolations,
    retryAfterMs: retryInfoMs ?? headerMs,
    details,
    requestId: headers.get("x-request-id") ?? undefined,
  });
}
