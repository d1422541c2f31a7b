/** What the SDK needs from its host, guarded so that one module runs in Node and in browsers. */

export const VERSION = "0.1.0";
export const LIBRARY_NAME = "@cartlytics/commerce";

export type Timer = ReturnType<typeof setTimeout>;

/** True in a page (a window with a document); false in Node, Deno, workers. */
export function inBrowser(): boolean {
  const g = globalThis as { window?: unknown; document?: unknown };
  return typeof g.window !== "undefined" && typeof g.document !== "undefined";
}

/** A timer that never keeps a Node process alive (`unref`); a plain timer elsewhere. */
export function unrefTimer(fn: () => void, ms: number): Timer {
  const timer = setTimeout(fn, ms);
  const t = timer as unknown as { unref?: () => void };
  if (typeof t.unref === "function") t.unref();
  return timer;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

function randomBytes(n: number): Uint8Array {
  const bytes = new Uint8Array(n);
  const c = (globalThis as { crypto?: { getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (c && typeof c.getRandomValues === "function") {
    c.getRandomValues(bytes);
  } else {
    // Node 18 without the global Web Crypto: ids need uniqueness, not secrecy.
    for (let i = 0; i < n; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  return bytes;
}

/** `evt_` + 32 random hex digits (docs/clients.md). */
export function newEventId(): string {
  let out = "evt_";
  for (const b of randomBytes(16)) out += HEX[b];
  return out;
}

/** A random UUID, version 4 (`crypto.randomUUID` where there is one). */
export function newUuid(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c && typeof c.randomUUID === "function") {
    try {
      return c.randomUUID();
    } catch {
      /* an insecure context (http page): made below */
    }
  }
  const b = randomBytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = Array.from(b, (x) => HEX[x]).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The UTF-8 length of a string, without encoding it. */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const next = s.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        n += 4;
        i++;
      } else n += 3;
    } else n += 3;
  }
  return n;
}

/**
 * The length of Python's `json.dumps` of the value `json` (JSON.stringify's output) encodes: the
 * server's measure of an event's size. `, ` and `: ` separators; every character outside
 * printable ASCII escaped as `\uXXXX` (a surrogate pair as two).
 */
export function pythonJsonLength(json: string): number {
  let n = 0;
  let inString = false;
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i);
    if (!inString) {
      if (c === 0x22) inString = true;
      n += c === 0x2c || c === 0x3a ? 2 : 1;
      continue;
    }
    if (c === 0x5c) {
      // An escape JSON.stringify wrote (\n, \", \u0001, \ud800): the same text in Python.
      const long = json.charCodeAt(i + 1) === 0x75;
      n += long ? 6 : 2;
      i += long ? 5 : 1;
    } else if (c === 0x22) {
      inString = false;
      n += 1;
    } else if (c < 0x7f) {
      n += 1;
    } else if (c >= 0xd800 && c <= 0xdbff && i + 1 < json.length) {
      const next = json.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
      n += next >= 0xdc00 && next <= 0xdfff ? 12 : 6;
    } else {
      n += 6;
    }
  }
  return n;
}

/** 32-bit FNV-1a in hex: a short, stable name derived from a secret without revealing it. */
export function fnv1a(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16).padStart(8, "0");
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
