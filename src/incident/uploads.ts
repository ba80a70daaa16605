/**
 * Ships evidence bundle archives to every configured sink, retrying with
 * exponential backoff and jitter until each has a verified copy. What is owed
 * is durable: one state file per bundle under <dataDir>/incidents/.uploads/
 * (written by rename), so an agent that restarts resumes where it stopped.
 * One upload at a time per sink: a bundle is large, and a sink that is down
 * is not hammered.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { ensureDir, quarantine, readRegular, writeFileAtomic } from '../buffer/datadir';
import { MAX_TIMER_MS } from '../defaults';
import { INCIDENTS_DIR } from './manifest';
import { type ArchiveToUpload, PermanentUploadError, type Sink } from './sinks/sink';

export const UPLOADS_DIR = '.uploads';

export const UPLOAD_DEFAULTS = {
  retry: {
    /** The first retry waits about this long; each next one twice as long, up to maxMs. */
    initialMs: 5_000,
    maxMs: 10 * 60_000,
    /** Unset: retry until it works (evidence is not given up on). */
    maxAttempts: undefined as number | undefined,
  },
} as const;

export interface RetryOptions {
  initialMs: number;
  maxMs: number;
  /** After this many failed attempts a sink's upload is given up (failed); unset: never. */
  maxAttempts?: number;
}

export interface UploadQueueOptions {
  dataDir: string;
  sinks: readonly Sink[];
  log: Logger;
  retry?: Partial<RetryOptions>;
}

export interface SinkStatus {
  /** Still owed to this sink (neither uploaded nor given up). */
  pending: boolean;
  attempts: number;
  lastError: string | null;
  /** RFC 3339. */
  lastAttemptAt: string | null;
  nextAttemptAt: string | null;
  uploadedAt: string | null;
  /** Where the verified copy is: s3://bucket/key, sftp://user@host:port/path. */
  remote: string | null;
  /** Given up: a permanent error, or maxAttempts reached. */
  failed: boolean;
}

export interface UploadStatus {
  id: string;
  archive: string;
  size: number;
  sha256: string;
  enqueuedAt: string;
  sinks: Record<string, SinkStatus>;
}

const sinkStatusSchema = z.object({
  pending: z.boolean(),
  attempts: z.number().int().nonnegative(),
  lastError: z.string().nullable(),
  lastAttemptAt: z.string().nullable(),
  nextAttemptAt: z.string().nullable(),
  uploadedAt: z.string().nullable(),
  remote: z.string().nullable(),
  failed: z.boolean(),
});
const uploadStatusSchema = z.object({
  id: z.string(),
  archive: z.string(),
  size: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  enqueuedAt: z.string(),
  sinks: z.record(z.string(), sinkStatusSchema),
});

/** Bundle ids name files: one path component, no dot first (not ours, not "..", not hidden). */
export const BUNDLE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;
const MAX_STATE_BYTES = 1024 * 1024;

/** Exponential backoff with equal jitter: half the delay fixed (it grows), half random (peers spread out). */
export function backoffMs(attempts: number, retry: RetryOptions, random = Math.random): number {
  const full = Math.min(retry.maxMs, retry.initialMs * 2 ** Math.max(0, attempts - 1));
  return Math.round(full / 2 + (random() * full) / 2);
}

export class UploadQueue {
  readonly dir: string;
  private readonly dataDir: string;
  private readonly sinks: ReadonlyMap<string, Sink>;
  private readonly log: Logger;
  private readonly retry: RetryOptions;
  private readonly states = new Map<string, UploadStatus>();
  /** Per bundle, its state writes in order (two sinks finishing at once share the file). */
  private readonly writes = new Map<string, Promise<void>>();
  /** The sink names busy now, with the attempt's promise. */
  private readonly running = new Map<string, Promise<void>>();
  private readonly abort = new AbortController();
  private readonly waiters = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;
  private started = false;
  private closed = false;

  constructor(opts: UploadQueueOptions) {
    this.dataDir = opts.dataDir;
    this.dir = path.join(opts.dataDir, INCIDENTS_DIR, UPLOADS_DIR);
    const sinks = new Map<string, Sink>();
    for (const sink of opts.sinks) {
      if (sinks.has(sink.name)) throw new Error(`two upload sinks are named "${sink.name}": give each its own name`);
      sinks.set(sink.name, sink);
    }
    this.sinks = sinks;
    this.log = opts.log.child({ event: 'upload' });
    this.retry = { ...UPLOAD_DEFAULTS.retry, ...opts.retry };
    if (!(this.retry.initialMs > 0) || !(this.retry.maxMs >= this.retry.initialMs)) {
      throw new Error(`upload retry: initialMs must be above 0 and maxMs at least initialMs (got ${this.retry.initialMs}, ${this.retry.maxMs})`);
    }
  }

  /** Loads what earlier runs still owe and starts uploading it. */
  async start(): Promise<void> {
    if (this.closed) throw new Error('upload queue is closed');
    await ensureDir(path.join(this.dataDir, INCIDENTS_DIR), false);
    await ensureDir(this.dir, false);
    for (const name of await fsp.readdir(this.dir)) {
      const file = path.join(this.dir, name);
      if (name.endsWith('.json.tmp')) {
        await fsp.unlink(file).catch(() => {}); // a write that died before its rename
        continue;
      }
      if (!name.endsWith('.json')) continue;
      const id = name.slice(0, -'.json'.length);
      if (this.states.has(id)) continue; // enqueued before start
      let state: UploadStatus;
      try {
        state = uploadStatusSchema.parse(JSON.parse((await readRegular(file, MAX_STATE_BYTES)).toString('utf8')));
        if (state.id !== id) throw new Error(`it names bundle ${state.id}`);
      } catch (err) {
        const to = await quarantine(this.dataDir, file).catch(() => null);
        this.log.error({ file, movedTo: to, err: errorText(err) }, 'upload state unreadable: moved aside, its bundle is not uploaded');
        continue;
      }
      const unknown = Object.keys(state.sinks).filter((s) => state.sinks[s].pending && !this.sinks.has(s));
      if (unknown.length > 0) this.log.warn({ id, sinks: unknown }, 'upload owed to sinks no longer configured: left pending');
      this.states.set(id, state);
    }
    const owed = [...this.states.values()].filter((s) => this.pendingSinks(s).length > 0).length;
    if (owed > 0) this.log.info({ bundles: owed }, 'resuming uploads');
    this.started = true;
    this.pump();
  }

  /**
   * Owes the archive to every configured sink; durable once it resolves.
   * The same archive again is a no-op; a different one under the same id is refused.
   */
  async enqueue(id: string, archivePath: string, digest: { size: number; sha256: string }): Promise<void> {
    if (this.closed) throw new Error('upload queue is closed');
    if (!BUNDLE_ID.test(id)) throw new Error(`bundle id ${JSON.stringify(id)}: not a valid bundle id`);
    if (!path.isAbsolute(archivePath)) throw new Error(`archive ${archivePath}: not an absolute path`);
    if (!Number.isSafeInteger(digest.size) || digest.size < 0) throw new Error(`archive ${archivePath}: size ${digest.size} is not a byte count`);
    if (!/^[0-9a-f]{64}$/.test(digest.sha256)) throw new Error(`archive ${archivePath}: sha256 must be 64 lowercase hex digits`);
    const known = this.states.get(id);
    if (known) {
      if (known.sha256 === digest.sha256 && known.size === digest.size && known.archive === archivePath) return;
      throw new Error(`bundle ${id} is already queued with another archive (sha256 ${known.sha256})`);
    }
    const state: UploadStatus = {
      id,
      archive: archivePath,
      size: digest.size,
      sha256: digest.sha256,
      enqueuedAt: new Date().toISOString(),
      sinks: {},
    };
    for (const name of this.sinks.keys()) state.sinks[name] = freshSinkStatus();
    await ensureDir(path.join(this.dataDir, INCIDENTS_DIR), false);
    await ensureDir(this.dir, false);
    this.states.set(id, state);
    try {
      await this.persist(id);
    } catch (err) {
      this.states.delete(id);
      throw err;
    }
    this.log.info({ id, archive: archivePath, size: digest.size, sinks: [...this.sinks.keys()] }, 'upload queued');
    this.pump();
  }

  /** A copy of the bundle's upload state, or null when it was never queued. */
  status(id: string): UploadStatus | null {
    const s = this.states.get(id);
    return s ? structuredClone(s) : null;
  }

  list(): UploadStatus[] {
    return [...this.states.values()].map((s) => structuredClone(s));
  }

  /** Every sink it was owed to has a verified copy. False for a bundle never queued. */
  isUploaded(id: string): boolean {
    const s = this.states.get(id);
    return s !== undefined && Object.values(s.sinks).every((x) => x.uploadedAt !== null);
  }

  /** Drops a bundle's upload state (retention removed the bundle). Not while an upload of it runs. */
  async forget(id: string): Promise<void> {
    if (!BUNDLE_ID.test(id)) return;
    this.states.delete(id);
    await (this.writes.get(id) ?? Promise.resolve());
    await fsp.unlink(path.join(this.dir, `${id}.json`)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  /** Resolves once no configured sink still owes the bundle anything (uploaded or given up), with its state. */
  async settled(id: string): Promise<UploadStatus> {
    for (;;) {
      const s = this.states.get(id);
      if (!s) throw new Error(`bundle ${id} is not queued`);
      if (this.pendingSinks(s).length === 0) return structuredClone(s);
      if (this.closed) throw new Error('upload queue closed before the upload settled');
      await new Promise<void>((resolve) => this.waiters.add(resolve));
    }
  }

  /** Stops retries and interrupts running uploads (they resume on the next start); closes the sinks. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.abort.abort(new Error('upload interrupted: the queue is closing'));
    await Promise.allSettled(this.running.values());
    await Promise.allSettled([...this.writes.values()]);
    await Promise.allSettled([...this.sinks.values()].map((s) => s.close()));
    this.notify();
  }

  private pendingSinks(s: UploadStatus): string[] {
    return Object.keys(s.sinks).filter((name) => s.sinks[name].pending && this.sinks.has(name));
  }

  /** Starts every due upload whose sink is idle, and sets the timer for the next one. */
  private pump(): void {
    if (!this.started || this.closed) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    const now = Date.now();
    let next = Infinity;
    for (const [name, sink] of this.sinks) {
      if (this.running.has(name)) continue;
      let oldestDue: UploadStatus | undefined; // due now: the oldest bundle first
      let soonest = Infinity; // none due: when the first one will be
      for (const s of this.states.values()) {
        const st = s.sinks[name];
        if (!st?.pending) continue;
        const at = st.nextAttemptAt ? Date.parse(st.nextAttemptAt) : 0;
        if (at <= now) {
          if (!oldestDue || s.enqueuedAt < oldestDue.enqueuedAt) oldestDue = s;
        } else soonest = Math.min(soonest, at);
      }
      if (oldestDue) this.run(oldestDue, sink);
      else next = Math.min(next, soonest);
    }
    if (next !== Infinity) this.timer = setTimeout(() => this.pump(), Math.min(Math.max(next - now, 1), MAX_TIMER_MS));
  }

  private run(state: UploadStatus, sink: Sink): void {
    const st = state.sinks[sink.name];
    st.attempts++;
    st.lastAttemptAt = new Date().toISOString();
    st.nextAttemptAt = null;
    const archive: ArchiveToUpload = { id: state.id, path: state.archive, size: state.size, sha256: state.sha256 };
    const started = Date.now();
    const attempt = (async () => {
      try {
        const { remote } = await sink.upload(archive, this.abort.signal);
        st.pending = false;
        st.lastError = null;
        st.uploadedAt = new Date().toISOString();
        st.remote = remote;
        this.log.info({ id: state.id, sink: sink.name, remote, attempts: st.attempts, ms: Date.now() - started }, 'uploaded and verified');
      } catch (err) {
        st.lastError = errorText(err);
        if (this.closed) {
          // interrupted, not failed: the next start tries at once
          this.log.info({ id: state.id, sink: sink.name }, 'upload interrupted by close: resumes on the next start');
        } else if (err instanceof PermanentUploadError || (this.retry.maxAttempts !== undefined && st.attempts >= this.retry.maxAttempts)) {
          st.pending = false;
          st.failed = true;
          this.log.error({ id: state.id, sink: sink.name, attempts: st.attempts, err: st.lastError }, 'upload given up');
        } else {
          const wait = backoffMs(st.attempts, this.retry);
          st.nextAttemptAt = new Date(Date.now() + wait).toISOString();
          this.log.warn({ id: state.id, sink: sink.name, attempts: st.attempts, retryInMs: wait, err: st.lastError }, 'upload failed: will retry');
        }
      }
      if (this.states.get(state.id) === state) {
        await this.persist(state.id).catch((err) => this.log.error({ id: state.id, err: errorText(err) }, 'upload state not written'));
      }
    })();
    this.running.set(sink.name, attempt);
    void attempt.finally(() => {
      this.running.delete(sink.name);
      this.notify();
      this.pump();
    });
  }

  private persist(id: string): Promise<void> {
    const write = (this.writes.get(id) ?? Promise.resolve()).then(async () => {
      const state = this.states.get(id);
      if (!state) return;
      await writeFileAtomic(path.join(this.dir, `${id}.json`), Buffer.from(`${JSON.stringify(state, null, 2)}\n`));
    });
    const settled = write.catch(() => {});
    this.writes.set(id, settled);
    void settled.then(() => {
      if (this.writes.get(id) === settled) this.writes.delete(id);
    });
    return write;
  }

  private notify(): void {
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const w of waiters) w();
  }
}

function freshSinkStatus(): SinkStatus {
  return { pending: true, attempts: 0, lastError: null, lastAttemptAt: null, nextAttemptAt: null, uploadedAt: null, remote: null, failed: false };
}

function errorText(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code && !err.message.includes(code) ? `${err.message} (${code})` : err.message || err.name;
  }
  return String(err);
}
