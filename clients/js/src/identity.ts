/** The client's visitor: an anonymousId and, after `identify`, a userId (docs/clients.md, "Identity"). */

import type { StorageLike } from "./queue.js";
import { newUuid } from "./runtime.js";

/** The ids an event that names none of its own is sent with. */
export interface Visitor {
  anonymousId: string;
  userId?: string;
}

/** The server's limit on a userId or anonymousId, in characters. */
export const MAX_ID_LENGTH = 256;

/** Throws a TypeError for an id the server would refuse on every event. */
export function checkId(name: string, value: unknown): string {
  if (typeof value !== "string" || value.trim() === "") {
    throw new TypeError(`${name} must be a non-empty string`);
  }
  const length = Array.from(value).length; // characters, as the server counts them
  if (length > MAX_ID_LENGTH) {
    throw new TypeError(`${name} must be at most ${MAX_ID_LENGTH} characters (${length})`);
  }
  return value;
}

function parse(text: string | null): Visitor | undefined {
  if (!text) return undefined;
  try {
    const v = JSON.parse(text) as { anonymousId?: unknown; userId?: unknown };
    if (!v || typeof v.anonymousId !== "string" || v.anonymousId === "") return undefined;
    return { anonymousId: v.anonymousId, userId: typeof v.userId === "string" && v.userId ? v.userId : undefined };
  } catch {
    return undefined;
  }
}

/**
 * The visitor, in memory, and in `storage` when persistence is on: there it is read at each
 * event (tabs of one origin share it: one tab's `identify` or `reset` is every tab's) and written
 * at each change. A storage that fails leaves the memory copy working.
 */
export class Identity {
  private visitor: Visitor;

  constructor(private readonly storage: StorageLike | undefined, private readonly key: string, given?: string) {
    const stored = this.read();
    if (given !== undefined) {
      checkId("anonymousId", given);
      if (stored?.anonymousId === given) {
        this.visitor = stored;
      } else {
        // Another visitor than the stored one: its user is not this one's.
        this.visitor = { anonymousId: given };
        this.write();
      }
    } else if (stored) {
      this.visitor = stored;
    } else {
      this.visitor = { anonymousId: newUuid() };
      this.write();
    }
  }

  /** The visitor now (the storage's, when it holds one). */
  current(): Visitor {
    if (this.storage) {
      const stored = this.read();
      if (stored) this.visitor = stored;
      else this.write(); // cleared by someone: kept as it was
    }
    return { ...this.visitor };
  }

  identify(userId: string): void {
    checkId("userId", userId);
    this.visitor = { ...this.current(), userId };
    this.write();
  }

  reset(): void {
    this.visitor = { anonymousId: newUuid() };
    this.write();
  }

  private read(): Visitor | undefined {
    if (!this.storage) return undefined;
    try {
      return parse(this.storage.getItem(this.key));
    } catch {
      return undefined;
    }
  }

  private write(): void {
    if (!this.storage) return;
    try {
      this.storage.setItem(this.key, JSON.stringify(this.visitor));
    } catch {
      /* full or forbidden storage: the memory copy still works */
    }
  }
}
