/**
 * The freeze manager: validates a freeze request against the caps, pins its
 * window against retention until the export is written, waits for the
 * window's end, and exports it (one export at a time; files in freeze.ts).
 */
import * as path from 'node:path';
import type { AmberEvent } from '../sensor/events';
import { NS_PER_MS, nowNs } from '../time';
import type { BufferLog } from './damage';
import {
  FROZEN_DIR,
  type FreezeRequest,
  FreezeRefusedError,
  type FrozenWindow,
  newWindowId,
  writeFrozenWindow,
} from './freeze';
import { type QueryFilter, validateFilter } from './query';

/** A freeze keeps segments pinned until its window ends: at most this far ahead. */
export const MAX_FREEZE_AFTER_NS = 3600e9;

export interface FreezerOptions {
  dataDir: string;
  maxFrozenWindows: number;
  maxFrozenBytes: number;
  /** Late events (still in the sensor's batches) get this much grace after a window's end. */
  graceMs: number;
  log: BufferLog;
  /** Writes what was appended (so the export holds it). */
  flush: () => Promise<void>;
  query: (filter: QueryFilter) => AsyncIterable<AmberEvent[]>;
}

interface Pin {
  from: number;
  /** Ends the wait for the window's end early (on close). */
  wake: () => void;
}

export class FreezeManager {
  windows: FrozenWindow[] = [];
  refused = 0;
  private readonly pins = new Set<Pin>();
  private readonly jobs = new Set<Promise<unknown>>();
  private exportChain: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: FreezerOptions) {}

  /** Whether retention must keep a segment whose newest event is `segmentMaxTs`. */
  isPinned(segmentMaxTs: number): boolean {
    for (const pin of this.pins) if (segmentMaxTs >= pin.from) return true;
    return false;
  }

  bytes(): number {
    return this.windows.reduce((sum, w) => sum + w.bytes, 0);
  }

  freeze(request: FreezeRequest): Promise<FrozenWindow> {
    const job = this.freezeWindow(request);
    this.jobs.add(job);
    const forget = () => this.jobs.delete(job);
    job.then(forget, forget);
    return job;
  }

  /** Ends every pending wait now (their windows are marked incomplete) and waits for the exports. */
  async finish(): Promise<void> {
    for (const pin of this.pins) pin.wake();
    await Promise.allSettled(this.jobs);
  }

  private async freezeWindow(request: FreezeRequest): Promise<FrozenWindow> {
    const { before, after, reason } = request;
    if (!(Number.isFinite(before) && before >= 0)) throw new RangeError('before must be a non-negative number of ns');
    if (!(Number.isFinite(after) && after >= 0)) throw new RangeError('after must be a non-negative number of ns');
    if (after > MAX_FREEZE_AFTER_NS) throw new RangeError(`after must be at most ${MAX_FREEZE_AFTER_NS} ns (1 h)`);
    if (typeof reason !== 'string' || reason.trim() === '') throw new RangeError('reason must be a non-empty string');
    const at = request.at ?? nowNs();
    if (!Number.isFinite(at)) throw new RangeError('at must be a finite number of ns');
    const filter = request.filter ?? {};
    validateFilter(filter);
    const from = Math.max(at - before, filter.since ?? -Infinity);
    const to = Math.min(at + after, filter.until ?? Infinity);
    if (from > to) throw new RangeError("the filter's since/until do not overlap [at-before, at+after]");

    const { maxFrozenWindows, maxFrozenBytes } = this.opts;
    const used = this.windows.length + this.pins.size;
    if (used >= maxFrozenWindows) {
      throw this.refuse(`frozen window "${reason}" refused: ${used} windows already kept or in progress (maxFrozenWindows ${maxFrozenWindows})`);
    }
    const usedBytes = this.bytes();
    if (usedBytes >= maxFrozenBytes) {
      throw this.refuse(`frozen window "${reason}" refused: frozen windows already hold ${usedBytes} bytes (maxFrozenBytes ${maxFrozenBytes})`);
    }

    let wake!: () => void;
    const woken = new Promise<void>((resolve) => (wake = resolve));
    const pin: Pin = { from, wake };
    this.pins.add(pin);
    try {
      const waitMs = (to - nowNs()) / NS_PER_MS + this.opts.graceMs;
      if (waitMs > 0) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([woken, new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)))]);
        clearTimeout(timer);
      }
      const complete = nowNs() >= to;
      await this.opts.flush();
      const job = this.exportChain.then(() =>
        writeFrozenWindow(
          path.join(this.opts.dataDir, FROZEN_DIR),
          {
            id: newWindowId(Date.now()),
            reason,
            from,
            to,
            created: new Date().toISOString(),
            ...(request.filter ? { filter: request.filter } : {}),
            complete,
          },
          this.opts.query({ ...filter, since: from, until: to }),
          maxFrozenBytes - this.bytes(),
        ),
      );
      this.exportChain = job.catch(() => {});
      const window = await job;
      this.windows.push(window);
      this.opts.log('info', 'event buffer: froze a window', { id: window.id, reason, from, to, count: window.count, bytes: window.bytes });
      return window;
    } catch (err) {
      if (err instanceof FreezeRefusedError) {
        this.refused++;
        this.opts.log('warn', err.message, { reason });
      }
      throw err;
    } finally {
      this.pins.delete(pin);
    }
  }

  private refuse(message: string): FreezeRefusedError {
    this.refused++;
    this.opts.log('warn', message);
    return new FreezeRefusedError(message);
  }
}
