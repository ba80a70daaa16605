/**
 * The forensic rolling buffer: every event of the node in append-only segment
 * files, bounded by bytes and age, queryable in time order, with windows that
 * can be frozen for investigators. Layout and format: FORMAT.md.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { type AmberEvent, EVENT_TYPES, type EventType } from '../sensor/events';
import { BlockEncoder, decodeBlockPayload } from './block-codec';
import { type Compressed, compressPayload, decompressPayload } from './compression';
import { type BlockInfo, type BlockSummary, encodeFrameHead, segmentHeader, SEGMENT_HEADER_BYTES } from './frame';
import {
  FROZEN_DIR,
  type FreezeRequest,
  FreezeRefusedError,
  type FrozenWindow,
  listFrozenWindows,
  newWindowId,
  removeUnfinishedWindows,
  writeFrozenWindow,
} from './freeze';
import { blockMayMatch, eventMatcher, eventsOf, type QueryFilter, TimeMerge, validateFilter } from './query';
import {
  CorruptBlockError,
  indexFileName,
  listSegments,
  readBlock,
  readIndex,
  scanSegment,
  SEGMENTS_DIR,
  segmentFileName,
  writeIndex,
} from './segment';
import { NS_PER_MS, nowNs } from '../time';

const MiB = 1024 * 1024;
export const DEFAULT_DATA_DIR = '/var/lib/amber';
const DEFAULTS = {
  maxBytes: 256 * MiB,
  maxAgeMs: 24 * 3600_000,
  flushIntervalMs: 1000,
  blockBytes: 1 * MiB,
  maxMemoryBytes: 64 * MiB,
  maxFrozenWindows: 50,
  maxFrozenBytes: 512 * MiB,
};
/** A freeze keeps segments pinned until its window ends: at most this far ahead. */
export const MAX_FREEZE_AFTER_NS = 3600e9;
const LOCK_FILE = 'LOCK';
const DISK_FULL_CODES = new Set(['ENOSPC', 'EDQUOT']);

export type LogLevel = 'info' | 'warn' | 'error';
export type BufferLog = (level: LogLevel, msg: string, fields?: Record<string, unknown>) => void;

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
  /** Uncompressed block size before it is compressed and written. Default 1 MiB. */
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

interface Segment {
  seq: number;
  file: string;
  size: number;
  blocks: BlockInfo[];
  /** Frame heads of the blocks, kept for the active segment's sidecar index. */
  heads: Buffer[];
  fh: fsp.FileHandle | null;
  openedAt: number;
}

/** A block closed for writing and not yet in a segment. */
interface MemoryBlock {
  summary: BlockSummary;
  raw: Buffer | null;
  compressed: Promise<Compressed>;
  memBytes: number;
}

interface Pin {
  from: number;
  /** Ends the wait for the window's end early (on close). */
  wake: () => void;
}

type Source =
  | { minTs: number; segment: Segment; block: BlockInfo }
  | { minTs: number; memory: MemoryBlock };

export class EventBuffer {
  private readonly segments: Segment[] = [];
  private nextSeq = 1;
  private active: Segment | null = null;
  private encoder: BlockEncoder | null = null;
  private readonly waiting: MemoryBlock[] = [];
  private inFlight: MemoryBlock | null = null;
  private memoryBytes = 0;
  private writer: Promise<void> = Promise.resolve();
  private writerRunning = false;
  private unsynced = false;
  private writeError: string | null = null;
  private droppedEvents = 0;
  private droppingReported = false;
  private readonly corruptSeen = new Set<string>();
  private frozen: FrozenWindow[] = [];
  private frozenRefused = 0;
  private readonly pins = new Set<Pin>();
  private readonly freezes = new Set<Promise<unknown>>();
  private exportChain: Promise<unknown> = Promise.resolve();
  private retention: Promise<void> | null = null;
  private retentionAgain = false;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private closing: Promise<void> | null = null;
  private lockFile: string | null = null;

  private readonly maxBytes: number;
  private readonly maxAgeNs: number;
  private readonly flushIntervalMs: number;
  private readonly segmentBytes: number;
  private readonly segmentMaxAgeMs: number;
  private readonly blockBytes: number;
  private readonly maxMemoryBytes: number;
  private readonly maxFrozenWindows: number;
  private readonly maxFrozenBytes: number;
  private readonly log: BufferLog;

  private constructor(
    readonly dataDir: string,
    readonly readOnly: boolean,
    opts: Partial<BufferOptions>,
  ) {
    this.maxBytes = positive('maxBytes', opts.maxBytes ?? DEFAULTS.maxBytes);
    this.maxAgeNs = positive('maxAgeMs', opts.maxAgeMs ?? DEFAULTS.maxAgeMs) * NS_PER_MS;
    this.flushIntervalMs = positive('flushIntervalMs', opts.flushIntervalMs ?? DEFAULTS.flushIntervalMs);
    this.segmentBytes = positive(
      'segmentBytes',
      opts.segmentBytes ?? Math.min(16 * MiB, Math.max(64 * 1024, Math.floor(this.maxBytes / 32))),
    );
    this.segmentMaxAgeMs = Math.min(3600_000, this.maxAgeNs / NS_PER_MS / 24);
    this.blockBytes = positive('blockBytes', opts.blockBytes ?? DEFAULTS.blockBytes);
    this.maxMemoryBytes = positive('maxMemoryBytes', opts.maxMemoryBytes ?? DEFAULTS.maxMemoryBytes);
    this.maxFrozenWindows = positive('maxFrozenWindows', opts.maxFrozenWindows ?? DEFAULTS.maxFrozenWindows);
    this.maxFrozenBytes = positive('maxFrozenBytes', opts.maxFrozenBytes ?? DEFAULTS.maxFrozenBytes);
    this.log = opts.log ?? (() => {});
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
    await buffer.loadSegments();
    buffer.frozen = await listFrozenWindows(path.join(dataDir, FROZEN_DIR));
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
    for (let i = 0; i < events.length; i++) {
      let encoder = this.encoder;
      if (encoder === null) encoder = this.encoder = new BlockEncoder(this.blockBytes + this.blockBytes / 8);
      encoder.append(events[i]);
      if (encoder.byteLength >= this.blockBytes) this.closeBlock();
    }
  }

  /** Writes everything appended so far to the disk (and syncs it). Does not throw on write errors: see stats().writeError. */
  async flush(): Promise<void> {
    if (this.readOnly) return;
    this.closeBlock();
    await this.drainWaiting();
    if (this.unsynced && this.active?.fh && this.writeError === null) {
      try {
        await this.active.fh.datasync();
        this.unsynced = false;
      } catch (err) {
        this.onWriteError(err);
      }
    }
    await this.enforceRetention();
  }

  private closeBlock(): void {
    const encoder = this.encoder;
    if (encoder === null || encoder.eventCount === 0) return;
    this.encoder = null;
    const { payload, summary } = encoder.finish();
    const block: MemoryBlock = { summary, raw: payload, compressed: compressPayload(payload), memBytes: payload.length };
    this.memoryBytes += block.memBytes;
    block.compressed.then(
      (c) => {
        block.raw = null;
        if (this.waiting.includes(block) || this.inFlight === block) this.memoryBytes += c.data.length - block.memBytes;
        block.memBytes = c.data.length;
      },
      () => {},
    );
    this.waiting.push(block);
    this.enforceMemoryBound();
    if (this.writeError === null) void this.drainWaiting();
  }

  private enforceMemoryBound(): void {
    while (this.memoryBytes > this.maxMemoryBytes && this.waiting.length > 1) {
      // The newest events matter most for an incident: drop the oldest waiting block.
      const dropped = this.waiting.shift()!;
      this.memoryBytes -= dropped.memBytes;
      this.droppedEvents += dropped.summary.count;
      if (!this.droppingReported) {
        this.droppingReported = true;
        this.log('error', 'event buffer: events are not reaching the disk and memory is at its bound; dropping the oldest', {
          dataDir: this.dataDir,
          maxMemoryBytes: this.maxMemoryBytes,
          writeError: this.writeError,
        });
      }
    }
  }

  /** Writes waiting blocks in order; one writer at a time. */
  private drainWaiting(): Promise<void> {
    if (!this.writerRunning) {
      this.writerRunning = true;
      this.writer = this.runWriter();
    }
    return this.writer;
  }

  private async runWriter(): Promise<void> {
    try {
      await this.writeWaiting();
    } finally {
      // Cleared in the same step the loop ends, so a block closed right after starts a new writer.
      this.writerRunning = false;
    }
  }

  private async writeWaiting(): Promise<void> {
    while (this.waiting.length > 0) {
      const block = this.waiting.shift()!;
      this.inFlight = block;
      let compressed: Compressed;
      try {
        compressed = await block.compressed;
      } catch (err) {
        this.inFlight = null;
        this.memoryBytes -= block.memBytes;
        this.droppedEvents += block.summary.count;
        this.log('error', 'event buffer: block compression failed; its events are dropped', { error: String(err) });
        continue;
      }
      let written: { segment: Segment; info: BlockInfo; head: Buffer };
      try {
        written = await this.writeBlock(block.summary, compressed);
      } catch (err) {
        this.inFlight = null;
        this.waiting.unshift(block);
        this.onWriteError(err);
        return; // retried at the next flush
      }
      // Index the block and release it in one synchronous step, so a query never sees it twice.
      written.segment.blocks.push(written.info);
      written.segment.heads.push(written.head);
      written.segment.size += written.info.frameLen;
      this.inFlight = null;
      this.memoryBytes -= block.memBytes;
      this.unsynced = true;
      this.onWriteSuccess();
      if (this.totalBytes() > this.maxBytes) void this.enforceRetention();
    }
  }

  private async writeBlock(summary: BlockSummary, compressed: Compressed) {
    const head = encodeFrameHead(summary, compressed.codec, compressed.data);
    const frameLen = head.length + compressed.data.length;
    const segment = await this.segmentFor(frameLen);
    const fh = segment.fh!;
    try {
      await writeFully(fh, [head, compressed.data], segment.size);
    } catch (err) {
      // Drop a partial frame so the file stays a clean sequence of frames.
      await fh.truncate(segment.size).catch(() => {});
      throw err;
    }
    const info: BlockInfo = { ...summary, codec: compressed.codec, offset: segment.size, frameLen };
    return { segment, info, head };
  }

  /** The segment the next frame goes to, rotating when the active one is full or old. */
  private async segmentFor(frameLen: number): Promise<Segment> {
    const current = this.active;
    if (current && current.blocks.length > 0) {
      const full = current.size + frameLen > this.segmentBytes;
      const old = Date.now() - current.openedAt >= this.segmentMaxAgeMs;
      if (full || old) await this.sealActive();
    }
    if (this.active) return this.active;
    const seq = this.nextSeq++;
    const file = path.join(this.dataDir, SEGMENTS_DIR, segmentFileName(seq));
    const fh = await fsp.open(file, 'wx', 0o600);
    try {
      await writeFully(fh, [segmentHeader()], 0);
    } catch (err) {
      await fh.close().catch(() => {});
      await fsp.rm(file, { force: true }).catch(() => {});
      throw err;
    }
    const segment: Segment = { seq, file, size: SEGMENT_HEADER_BYTES, blocks: [], heads: [], fh, openedAt: Date.now() };
    this.segments.push(segment);
    this.active = segment;
    return segment;
  }

  private async sealActive(): Promise<void> {
    const segment = this.active;
    if (!segment) return;
    this.active = null;
    const fh = segment.fh!;
    segment.fh = null;
    try {
      await fh.datasync();
      this.unsynced = false;
    } finally {
      await fh.close();
    }
    // The sidecar only speeds up the next open; without it the segment is scanned.
    await writeIndex(indexFileName(segment.file), segment.blocks, segment.size, segment.heads).catch(() => {});
    segment.heads = [];
  }

  private onWriteError(err: unknown): void {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    if (this.writeError !== null) return;
    this.writeError = code;
    const diskFull = DISK_FULL_CODES.has(code);
    this.log(
      'error',
      diskFull
        ? 'event buffer: disk full; keeping events in memory (bounded) and retrying every flush interval'
        : 'event buffer: writes are failing; keeping events in memory (bounded) and retrying every flush interval',
      { dataDir: this.dataDir, code, error: String(err), maxMemoryBytes: this.maxMemoryBytes },
    );
  }

  private onWriteSuccess(): void {
    if (this.writeError === null) return;
    this.log('info', 'event buffer: writing again', {
      dataDir: this.dataDir,
      after: this.writeError,
      droppedEvents: this.droppedEvents,
    });
    this.writeError = null;
    this.droppingReported = false;
  }

  // ---- retention ----

  private totalBytes(): number {
    let total = 0;
    for (const s of this.segments) total += s.size;
    return total;
  }

  /** Deletes the oldest sealed segments past maxBytes or maxAge, except those a freeze pins. */
  private enforceRetention(): Promise<void> {
    if (this.readOnly) return Promise.resolve();
    if (this.retention) {
      this.retentionAgain = true;
      return this.retention;
    }
    this.retention = (async () => {
      try {
        do {
          this.retentionAgain = false;
          await this.deleteExpiredSegments();
        } while (this.retentionAgain);
      } finally {
        this.retention = null; // in the step the loop ends: a later request starts a new pass
      }
    })();
    return this.retention;
  }

  private async deleteExpiredSegments(): Promise<void> {
    const oldestKept = nowNs() - this.maxAgeNs;
    let total = this.totalBytes();
    for (const segment of [...this.segments]) {
      if (segment === this.active) return;
      const newest = segmentMaxTs(segment);
      if (total <= this.maxBytes && newest >= oldestKept) return;
      if (this.isPinned(newest)) return;
      this.segments.splice(this.segments.indexOf(segment), 1);
      total -= segment.size;
      try {
        await fsp.rm(segment.file, { force: true });
        await fsp.rm(indexFileName(segment.file), { force: true });
      } catch (err) {
        this.log('warn', 'event buffer: retention could not delete a segment', { file: segment.file, error: String(err) });
      }
    }
  }

  private isPinned(segmentMaxTs: number): boolean {
    for (const pin of this.pins) if (segmentMaxTs >= pin.from) return true;
    return false;
  }

  // ---- queries ----

  /**
   * Matching events in time order, streamed block by block (skipping blocks whose
   * summary cannot match). Includes appended events not yet written. Throws
   * RangeError at once on a filter that cannot be meant.
   */
  query(filter: QueryFilter = {}): AsyncIterableIterator<AmberEvent> {
    validateFilter(filter);
    return eventsOf(this.batches(filter));
  }

  /** The same events as query(), in time-ordered batches: much cheaper per event for bulk readers (exports, CLI). */
  queryBatches(filter: QueryFilter = {}): AsyncGenerator<AmberEvent[]> {
    validateFilter(filter);
    return this.batches(filter);
  }

  private async *batches(filter: QueryFilter): AsyncGenerator<AmberEvent[]> {
    if (!this.readOnly) this.closeBlock();
    const sources: Source[] = [];
    for (const segment of this.segments) {
      for (const block of segment.blocks) if (blockMayMatch(block, filter)) sources.push({ minTs: block.minTs, segment, block });
    }
    for (const memory of [this.inFlight, ...this.waiting]) {
      if (memory && blockMayMatch(memory.summary, filter)) sources.push({ minTs: memory.summary.minTs, memory });
    }
    // Stable: equal minTs keep append order.
    sources.sort((a, b) => a.minTs - b.minTs);

    const remaining = new Map<Segment, number>();
    for (const s of sources) if ('segment' in s) remaining.set(s.segment, (remaining.get(s.segment) ?? 0) + 1);
    const handles = new Map<Segment, fsp.FileHandle | null>();
    const matches = eventMatcher(filter);
    const merge = new TimeMerge();
    // One block is read and decompressed ahead while the consumer works on the current one.
    let next: Promise<AmberEvent[]> | null = sources.length ? this.loadSource(sources[0], handles, remaining) : null;
    try {
      for (let i = 0; i < sources.length; i++) {
        const events = await next!;
        next = i + 1 < sources.length ? this.loadSource(sources[i + 1], handles, remaining) : null;
        merge.add(events.filter(matches));
        const ready = merge.take(i + 1 < sources.length ? sources[i + 1].minTs : Infinity);
        if (ready.length > 0) yield ready;
      }
    } finally {
      await next?.catch(() => {});
      for (const fh of handles.values()) await fh?.close();
    }
  }

  private async loadSource(
    source: Source,
    handles: Map<Segment, fsp.FileHandle | null>,
    remaining: Map<Segment, number>,
  ): Promise<AmberEvent[]> {
    if ('memory' in source) {
      const { memory } = source;
      if (memory.raw) return decodeBlockPayload(memory.raw);
      const compressed = await memory.compressed;
      return decodeBlockPayload(await decompressPayload(compressed.codec, compressed.data, memory.summary.rawLen));
    }
    const { segment, block } = source;
    let fh = handles.get(segment);
    if (fh === undefined) {
      // A segment retention deleted since the query started has aged out: skip it.
      fh = await fsp.open(segment.file, 'r').catch(() => null);
      handles.set(segment, fh);
    }
    try {
      return fh ? await readBlock(fh, block) : [];
    } catch (err) {
      if (!(err instanceof CorruptBlockError)) throw err;
      this.reportCorrupt(segment.file, block.offset, err.message);
      return [];
    } finally {
      const left = remaining.get(segment)! - 1;
      remaining.set(segment, left);
      if (left === 0 && fh) {
        handles.set(segment, null);
        await fh.close();
      }
    }
  }

  private reportCorrupt(file: string, offset: number, reason: string): void {
    const key = `${file}@${offset}`;
    if (this.corruptSeen.has(key)) return;
    this.corruptSeen.add(key);
    this.log('warn', 'event buffer: skipping a damaged block', { file, offset, reason });
  }

  // ---- stats ----

  stats(): BufferStats {
    const eventsPerType = Object.fromEntries(EVENT_TYPES.map((t) => [t, 0])) as Record<EventType, number>;
    let events = 0;
    let oldestTs = Infinity;
    let newestTs = -Infinity;
    for (const segment of this.segments) {
      for (const block of segment.blocks) {
        events += block.count;
        EVENT_TYPES.forEach((t, i) => (eventsPerType[t] += block.typeCounts[i]));
        if (block.minTs < oldestTs) oldestTs = block.minTs;
        if (block.maxTs > newestTs) newestTs = block.maxTs;
      }
    }
    let memoryEvents = this.encoder?.eventCount ?? 0;
    for (const block of this.waiting) memoryEvents += block.summary.count;
    if (this.inFlight) memoryEvents += this.inFlight.summary.count;
    return {
      dataDir: this.dataDir,
      readOnly: this.readOnly,
      segments: this.segments.length,
      bytes: this.totalBytes(),
      events,
      oldestTs: events > 0 ? oldestTs : null,
      newestTs: events > 0 ? newestTs : null,
      eventsPerType,
      memoryEvents,
      droppedEvents: this.droppedEvents,
      corruptBlocks: this.corruptSeen.size,
      writeError: this.writeError,
      frozen: {
        windows: this.frozen.slice(),
        bytes: this.frozenBytes(),
        refused: this.frozenRefused,
      },
    };
  }

  // ---- freezing ----

  /**
   * Pins [at-before, at+after] against retention, waits until at+after, then
   * exports the window to <dataDir>/frozen/<id>/. Rejects with FreezeRefusedError
   * when the frozen-data caps would be exceeded.
   */
  freeze(request: FreezeRequest): Promise<FrozenWindow> {
    const job = this.freezeWindow(request);
    this.freezes.add(job);
    const forget = () => this.freezes.delete(job);
    job.then(forget, forget);
    return job;
  }

  private async freezeWindow(request: FreezeRequest): Promise<FrozenWindow> {
    if (this.readOnly) throw new Error('buffer is open read-only');
    if (this.closed) throw new Error('buffer is closed');
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

    const used = this.frozen.length + this.pins.size;
    if (used >= this.maxFrozenWindows) {
      throw this.refuse(`frozen window "${reason}" refused: ${used} windows already kept or in progress (maxFrozenWindows ${this.maxFrozenWindows})`);
    }
    const usedBytes = this.frozenBytes();
    if (usedBytes >= this.maxFrozenBytes) {
      throw this.refuse(`frozen window "${reason}" refused: frozen windows already hold ${usedBytes} bytes (maxFrozenBytes ${this.maxFrozenBytes})`);
    }

    let wake!: () => void;
    const woken = new Promise<void>((resolve) => (wake = resolve));
    const pin: Pin = { from, wake };
    this.pins.add(pin);
    try {
      // Late events (still in the sensor's batches) get one flush interval of grace.
      const waitMs = (to - nowNs()) / NS_PER_MS + this.flushIntervalMs;
      if (waitMs > 0) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([woken, new Promise<void>((resolve) => (timer = setTimeout(resolve, waitMs)))]);
        clearTimeout(timer);
      }
      const complete = nowNs() >= to;
      await this.flush();
      const job = this.exportChain.then(() =>
        writeFrozenWindow(
          path.join(this.dataDir, FROZEN_DIR),
          {
            id: newWindowId(Date.now()),
            reason,
            from,
            to,
            created: new Date().toISOString(),
            ...(request.filter ? { filter: request.filter } : {}),
            complete,
          },
          this.queryBatches({ ...filter, since: from, until: to }),
          this.maxFrozenBytes - this.frozenBytes(),
        ),
      );
      this.exportChain = job.catch(() => {});
      const window = await job;
      this.frozen.push(window);
      this.log('info', 'event buffer: froze a window', { id: window.id, reason, from, to, count: window.count, bytes: window.bytes });
      return window;
    } catch (err) {
      if (err instanceof FreezeRefusedError) {
        this.frozenRefused++;
        this.log('warn', err.message, { reason });
      }
      throw err;
    } finally {
      this.pins.delete(pin);
    }
  }

  private frozenBytes(): number {
    return this.frozen.reduce((sum, w) => sum + w.bytes, 0);
  }

  private refuse(message: string): FreezeRefusedError {
    this.frozenRefused++;
    this.log('warn', message);
    return new FreezeRefusedError(message);
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
    for (const pin of this.pins) pin.wake();
    await Promise.allSettled(this.freezes);
    await this.flush();
    const unwritten = this.stats().memoryEvents;
    if (unwritten > 0) {
      this.droppedEvents += unwritten;
      this.log('error', 'event buffer: closing with events the disk did not take; they are lost', { events: unwritten });
    }
    await this.sealActive().catch((err) => this.log('warn', 'event buffer: could not seal the last segment', { error: String(err) }));
    if (this.lockFile) await fsp.rm(this.lockFile, { force: true });
  }

  private async openForWriting(): Promise<void> {
    // Events hold command lines and paths (secrets, sometimes): owner only.
    await fsp.mkdir(this.dataDir, { recursive: true, mode: 0o700 });
    await fsp.mkdir(path.join(this.dataDir, SEGMENTS_DIR), { recursive: true, mode: 0o700 });
    await fsp.mkdir(path.join(this.dataDir, FROZEN_DIR), { recursive: true, mode: 0o700 });
    this.lockFile = await acquireLock(this.dataDir);
    try {
      await removeUnfinishedWindows(path.join(this.dataDir, FROZEN_DIR));
      await this.loadSegments();
      this.frozen = await listFrozenWindows(path.join(this.dataDir, FROZEN_DIR));
      await this.enforceRetention();
    } catch (err) {
      await fsp.rm(this.lockFile, { force: true });
      throw err;
    }
    this.timer = setInterval(() => {
      this.flush().catch((err) => this.log('error', 'event buffer: flush failed', { error: String(err) }));
    }, this.flushIntervalMs);
    this.timer.unref();
  }

  /**
   * Builds the in-memory index. Writable: the last segment is always scanned
   * (never trusting its sidecar), torn tails are truncated and sidecars
   * rewritten. Read-only: nothing is written; torn tails are just ignored.
   */
  private async loadSegments(): Promise<void> {
    const dir = path.join(this.dataDir, SEGMENTS_DIR);
    const seqs = await listSegments(dir);
    if (!this.readOnly) {
      for (const name of await fsp.readdir(dir)) if (name.endsWith('.tmp')) await fsp.rm(path.join(dir, name), { force: true });
    }
    for (const [i, seq] of seqs.entries()) {
      const file = path.join(dir, segmentFileName(seq));
      const size = (await fsp.stat(file)).size;
      const isLast = i === seqs.length - 1;
      let blocks = isLast && !this.readOnly ? null : await readIndex(indexFileName(file), size);
      let segmentSize = size;
      if (!blocks) {
        const scan = await scanSegment(file);
        if (scan.header === 'foreign') {
          if (!this.readOnly) {
            throw new Error(`${file} is not a segment this version of Amber can read: refusing to write to ${this.dataDir}`);
          }
          this.log('warn', 'event buffer: skipping a file that is not a segment this version can read', { file });
          continue;
        }
        if (scan.header === 'torn') {
          // Created but never written (crash or disk full right at rotation).
          if (!this.readOnly) {
            await fsp.rm(file, { force: true });
            await fsp.rm(indexFileName(file), { force: true });
          }
          continue;
        }
        for (const damaged of scan.damaged) {
          this.reportCorrupt(file, damaged.offset, `${damaged.length} damaged bytes skipped`);
        }
        if (scan.tailBytes > 0) {
          if (isLast) {
            const what = this.readOnly ? 'ignoring' : 'dropping';
            this.log('info', `event buffer: ${what} the torn tail of the last segment`, { file, bytes: scan.tailBytes });
          } else {
            this.reportCorrupt(file, scan.validEnd, `${scan.tailBytes} damaged bytes at the end skipped`);
          }
        }
        blocks = scan.blocks;
        segmentSize = scan.validEnd;
        if (!this.readOnly) {
          if (scan.tailBytes > 0) await fsp.truncate(file, scan.validEnd);
          await writeIndex(indexFileName(file), blocks, segmentSize, scan.heads).catch(() => {});
        }
      }
      this.segments.push({ seq, file, size: segmentSize, blocks, heads: [], fh: null, openedAt: 0 });
    }
    this.nextSeq = (seqs.at(-1) ?? 0) + 1;
  }
}

function positive(name: string, value: number): number {
  if (!(Number.isFinite(value) && value > 0)) throw new RangeError(`${name} must be a positive number, got ${value}`);
  return value;
}

function segmentMaxTs(segment: Segment): number {
  let max = -Infinity;
  for (const b of segment.blocks) if (b.maxTs > max) max = b.maxTs;
  return max;
}

async function writeFully(fh: fsp.FileHandle, buffers: Buffer[], position: number): Promise<void> {
  let pending = buffers.filter((b) => b.length > 0);
  let at = position;
  while (pending.length > 0) {
    const { bytesWritten } = await fh.writev(pending, at);
    at += bytesWritten;
    let skip = bytesWritten;
    const rest: Buffer[] = [];
    for (const b of pending) {
      if (skip >= b.length) skip -= b.length;
      else {
        rest.push(skip > 0 ? b.subarray(skip) : b);
        skip = 0;
      }
    }
    pending = rest;
  }
}

async function acquireLock(dataDir: string): Promise<string> {
  const file = path.join(dataDir, LOCK_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await fsp.open(file, 'wx', 0o600);
      // An empty lock (disk full) still locks; it reads as stale once its writer is gone.
      await fh.writeFile(`${process.pid}\n`).catch(() => {});
      await fh.close();
      return file;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number.parseInt(await fsp.readFile(file, 'utf8').catch(() => ''), 10);
      if (pid > 0 && isAlive(pid)) {
        throw new Error(`data dir ${dataDir} is in use by process ${pid} (lock file ${file})`);
      }
      await fsp.rm(file, { force: true });
    }
  }
  throw new Error(`could not lock data dir ${dataDir} (lock file ${file})`);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
