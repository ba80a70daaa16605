/**
 * The forensic rolling buffer: every event of the node in append-only segment
 * files, bounded by bytes and age, queryable in time order, with windows that
 * can be frozen for investigators. Layout and format: FORMAT.md.
 *
 * This class is the facade; the parts behind it:
 *   store.ts         open block, blocks waiting for the disk, writer, rotation, retention
 *   recovery.ts      what the data dir holds at open (scan, sidecars, torn tails, quarantine)
 *   query-engine.ts  time-ordered queries over disk, pending and open blocks; verify
 *   freezer.ts       freeze requests, caps, pins against retention, exports
 *   lock.ts          the data-dir lock (flock)
 *   datadir.ts       data-dir checks and safe file opens
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { type AmberEvent, EVENT_TYPES, type EventType } from '../sensor/events';
import { ensureDir } from './datadir';
import { type BufferLog, DamageLog } from './damage';
import { FROZEN_DIR, type FreezeRequest, type FrozenWindow, listFrozenWindows, removeUnfinishedWindows } from './freeze';
import { FreezeManager } from './freezer';
import { MAX_BLOCK_BYTES } from './frame';
import { DataDirLock } from './lock';
import { eventsOf, type QueryFilter, validateFilter } from './query';
import { QueryEngine, type VerifyResult } from './query-engine';
import { SEGMENTS_DIR } from './segment';
import { SegmentStore } from './store';
import { NS_PER_MS } from '../time';
import { DEFAULTS as ONE_TABLE } from '../defaults';

export type { BufferLog, LogLevel } from './damage';
export { MAX_FREEZE_AFTER_NS } from './freezer';
export type { VerifyResult } from './query-engine';

const MiB = 1024 * 1024;
/** Option defaults: the one table (src/defaults.ts) the configuration also reads. */
const DEFAULTS = ONE_TABLE.buffer;

export interface BufferOptions {
  dataDir: string;
  /** Bytes of segment files kept; oldest segments go first. Default 256 MiB. */
  maxBytes?: number;
  /** Segments whose newest event is older than this go. Default 24 h. */
  maxAgeMs?: number;
  /** Appended events reach the disk (and fdatasync) at least this often. Default 1000. */
  flushIntervalMs?: number;
  /** Segment file size before rotating. Default maxBytes/32, within 64 KiB..16 MiB. */
  segmentBytes?: number;
  /** Uncompressed block size before it is compressed and written. Default 1 MiB, at most 16 MiB. */
  blockBytes?: number;
  /** Blocks waiting for the disk (e.g. while it is full) are kept up to this many bytes; then the oldest are dropped. Default 64 MiB. */
  maxMemoryBytes?: number;
  /** Frozen windows kept at most (count). Default 50. */
  maxFrozenWindows?: number;
  /** Frozen windows kept at most (bytes of their event files). Default 512 MiB. */
  maxFrozenBytes?: number;
  log?: BufferLog;
}

export interface BufferStats {
  dataDir: string;
  readOnly: boolean;
  segments: number;
  /** Bytes of segment files. */
  bytes: number;
  /** Events stored in segments. */
  events: number;
  /** Oldest and newest event ts in segments (ns), null when empty. */
  oldestTs: number | null;
  newestTs: number | null;
  eventsPerType: Record<EventType, number>;
  /** Appended, not yet in a segment (waiting for the next flush, or for disk space). */
  memoryEvents: number;
  /** Dropped because the disk could not take them and memory was at its bound. */
  droppedEvents: number;
  /** Blocks skipped because their checksum or contents did not hold. */
  corruptBlocks: number;
  /** The error code while writes are failing (e.g. ENOSPC), else null. */
  writeError: string | null;
  frozen: { windows: FrozenWindow[]; bytes: number; refused: number };
}

export class EventBuffer {
  private readonly store: SegmentStore;
  private readonly engine: QueryEngine;
  private readonly freezer: FreezeManager;
  private readonly damage: DamageLog;
  private lock: DataDirLock | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private closing: Promise<void> | null = null;
  private readonly flushIntervalMs: number;
  private readonly log: BufferLog;

  private constructor(
    readonly dataDir: string,
    readonly readOnly: boolean,
    opts: Partial<BufferOptions>,
  ) {
    const maxBytes = positive('maxBytes', opts.maxBytes ?? DEFAULTS.maxBytes);
    const maxAgeNs = positive('maxAgeMs', opts.maxAgeMs ?? DEFAULTS.maxAgeMs) * NS_PER_MS;
    this.flushIntervalMs = positive('flushIntervalMs', opts.flushIntervalMs ?? DEFAULTS.flushIntervalMs);
    const blockBytes = positive('blockBytes', opts.blockBytes ?? DEFAULTS.blockBytes);
    if (blockBytes > MAX_BLOCK_BYTES) throw new RangeError(`blockBytes must be at most ${MAX_BLOCK_BYTES}, got ${blockBytes}`);
    this.log = opts.log ?? (() => {});
    this.damage = new DamageLog(this.log);
    this.freezer = new FreezeManager({
      dataDir,
      maxFrozenWindows: positive('maxFrozenWindows', opts.maxFrozenWindows ?? DEFAULTS.maxFrozenWindows),
      maxFrozenBytes: positive('maxFrozenBytes', opts.maxFrozenBytes ?? DEFAULTS.maxFrozenBytes),
      graceMs: this.flushIntervalMs,
      log: this.log,
      flush: () => this.flush(),
      query: (filter) => this.queryBatches(filter),
    });
    this.store = new SegmentStore(
      dataDir,
      readOnly,
      {
        maxBytes,
        maxAgeNs,
        segmentBytes: positive('segmentBytes', opts.segmentBytes ?? Math.min(16 * MiB, Math.max(64 * 1024, Math.floor(maxBytes / 32)))),
        segmentMaxAgeMs: Math.min(3600_000, maxAgeNs / NS_PER_MS / 24),
        blockBytes,
        maxMemoryBytes: positive('maxMemoryBytes', opts.maxMemoryBytes ?? DEFAULTS.maxMemoryBytes),
        isPinned: (maxTs) => this.freezer.isPinned(maxTs),
      },
      this.log,
      this.damage,
    );
    this.engine = new QueryEngine(this.damage);
  }

  /** Opens (creating if needed) a data dir for writing: recovers it, then appends to a new segment. */
  static async open(opts: BufferOptions): Promise<EventBuffer> {
    const buffer = new EventBuffer(opts.dataDir, false, opts);
    await buffer.openForWriting();
    return buffer;
  }

  /** Opens a data dir (or a copy of one) for queries and stats only; never writes to it. */
  static async openReadOnly(dataDir: string, opts: { log?: BufferLog } = {}): Promise<EventBuffer> {
    const stat = await fsp.stat(dataDir).catch(() => null);
    if (!stat?.isDirectory()) throw new Error(`data dir ${dataDir} does not exist or is not a directory`);
    const buffer = new EventBuffer(dataDir, true, opts);
    await buffer.store.load();
    buffer.freezer.windows = await listFrozenWindows(path.join(dataDir, FROZEN_DIR), buffer.log);
    return buffer;
  }

  // ---- appending (hot path) ----

  /**
   * Adds events (the buffer takes them as they are; do not mutate them after).
   * Synchronous and cheap: events are encoded into the current block; full
   * blocks are compressed and written in the background.
   */
  append(events: readonly AmberEvent[]): void {
    if (this.readOnly) throw new Error('buffer is open read-only');
    if (this.closed) throw new Error('buffer is closed');
    this.store.append(events);
  }

  /** Writes everything appended so far to the disk (and syncs it). Does not throw on write errors: see stats().writeError. */
  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.store.flush();
  }

  // ---- queries ----

  /**
   * Matching events in time order, streamed block by block (skipping blocks whose
   * summary cannot match). Includes appended events not yet written (read from
   * memory: a query never closes the block being filled). Throws RangeError at
   * once on a filter that cannot be meant.
   */
  query(filter: QueryFilter = {}): AsyncIterableIterator<AmberEvent> {
    validateFilter(filter);
    return eventsOf(this.engine.batches(() => this.store.snapshot(), filter));
  }

  /** The same events as query(), in time-ordered batches: much cheaper per event for bulk readers (exports, CLI). */
  queryBatches(filter: QueryFilter = {}): AsyncGenerator<AmberEvent[]> {
    validateFilter(filter);
    return this.engine.batches(() => this.store.snapshot(), filter);
  }

  /** Reads and checks every written block (the index alone cannot show damage inside a block). */
  verify(): Promise<VerifyResult> {
    return this.engine.verify(this.store.snapshot());
  }

  // ---- stats ----

  stats(): BufferStats {
    const eventsPerType = Object.fromEntries(EVENT_TYPES.map((t) => [t, 0])) as Record<EventType, number>;
    let events = 0;
    let oldestTs = Infinity;
    let newestTs = -Infinity;
    for (const segment of this.store.segments) {
      for (const block of segment.blocks) {
        events += block.count;
        EVENT_TYPES.forEach((t, i) => (eventsPerType[t] += block.typeCounts[i]));
        if (block.minTs < oldestTs) oldestTs = block.minTs;
        if (block.maxTs > newestTs) newestTs = block.maxTs;
      }
    }
    return {
      dataDir: this.dataDir,
      readOnly: this.readOnly,
      segments: this.store.segments.length,
      bytes: this.store.totalBytes(),
      events,
      oldestTs: events > 0 ? oldestTs : null,
      newestTs: events > 0 ? newestTs : null,
      eventsPerType,
      memoryEvents: this.store.memoryEvents(),
      droppedEvents: this.store.droppedEvents,
      corruptBlocks: this.damage.count,
      writeError: this.store.writeError,
      frozen: {
        windows: this.freezer.windows.slice(),
        bytes: this.freezer.bytes(),
        refused: this.freezer.refused,
      },
    };
  }

  // ---- freezing ----

  /**
   * Pins [at-before, at+after] against retention, waits until at+after, then
   * exports the window to <dataDir>/frozen/<id>/. Rejects with FreezeRefusedError
   * when the frozen-data caps would be exceeded.
   */
  async freeze(request: FreezeRequest): Promise<FrozenWindow> {
    if (this.readOnly) throw new Error('buffer is open read-only');
    if (this.closed) throw new Error('buffer is closed');
    return this.freezer.freeze(request);
  }

  // ---- open / close ----

  /** Flushes, finishes pending freezes early (complete: false), seals the segment, releases the data dir. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.readOnly) return;
    await this.freezer.finish();
    await this.flush();
    const unwritten = this.store.memoryEvents();
    if (unwritten > 0) {
      this.store.droppedEvents += unwritten;
      this.log('error', 'event buffer: closing with events the disk did not take; they are lost', { events: unwritten });
    }
    await this.store.sealActive().catch((err) => this.log('warn', 'event buffer: could not seal the last segment', { error: String(err) }));
    await this.lock?.release();
    this.lock = null;
  }

  private async openForWriting(): Promise<void> {
    // Events hold command lines and paths (secrets, sometimes): owner only, and
    // nobody else may plant files where a root process writes.
    await ensureDir(this.dataDir, true);
    this.lock = await DataDirLock.acquire(this.dataDir);
    try {
      await ensureDir(path.join(this.dataDir, SEGMENTS_DIR), false);
      await ensureDir(path.join(this.dataDir, FROZEN_DIR), false);
      await removeUnfinishedWindows(path.join(this.dataDir, FROZEN_DIR));
      await this.store.load();
      this.freezer.windows = await listFrozenWindows(path.join(this.dataDir, FROZEN_DIR), this.log);
      await this.store.enforceRetention();
    } catch (err) {
      await this.lock.release();
      this.lock = null;
      throw err;
    }
    this.timer = setInterval(() => {
      this.flush().catch((err) => this.log('error', 'event buffer: flush failed', { error: String(err) }));
    }, this.flushIntervalMs);
    this.timer.unref();
  }
}

function positive(name: string, value: number): number {
  if (!(Number.isFinite(value) && value > 0)) throw new RangeError(`${name} must be a positive number, got ${value}`);
  return value;
}
