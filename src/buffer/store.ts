/**
 * The segment store: the open block events are encoded into, blocks waiting
 * for the disk (bounded; the oldest dropped, counted, when the disk refuses
 * them), the one writer that appends frames and rotates segments, and
 * retention. What is on disk at open comes from recovery.ts.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { AmberEvent } from '../sensor/events';
import { BlockEncoder } from './block-codec';
import { type Compressed, compressPayload } from './compression';
import { createExclusive } from './datadir';
import type { BufferLog, DamageLog } from './damage';
import { type BlockInfo, type BlockSummary, encodeFrameHead, MAX_PAYLOAD_BYTES, segmentHeader, SEGMENT_HEADER_BYTES } from './frame';
import { recoverSegments, type Segment } from './recovery';
import { indexFileName, SEGMENTS_DIR, segmentFileName, writeIndex } from './segment';
import { nowNs } from '../time';

const DISK_FULL_CODES = new Set(['ENOSPC', 'EDQUOT']);

export interface StoreOptions {
  maxBytes: number;
  maxAgeNs: number;
  segmentBytes: number;
  segmentMaxAgeMs: number;
  blockBytes: number;
  maxMemoryBytes: number;
  /** Retention keeps a segment whose newest event is at or after a pinned time (a freeze in progress). */
  isPinned: (segmentMaxTs: number) => boolean;
}

/** A block closed for writing and not yet in a segment. */
export interface MemoryBlock {
  summary: BlockSummary;
  raw: Buffer | null;
  compressed: Promise<Compressed>;
  memBytes: number;
}

/** What a query reads at one instant: written blocks, blocks on their way, and the open block's events. */
export interface StoreSnapshot {
  segments: readonly Segment[];
  memory: MemoryBlock[];
  /** The open block's payload so far (a copy), or null: read from memory so a query never closes the block. */
  open: Buffer | null;
}

export class SegmentStore {
  readonly segments: Segment[] = [];
  private nextSeq = 1;
  private active: Segment | null = null;
  private encoder: BlockEncoder | null = null;
  private readonly waiting: MemoryBlock[] = [];
  private inFlight: MemoryBlock | null = null;
  private memoryBytes = 0;
  private writer: Promise<void> = Promise.resolve();
  private writerRunning = false;
  private unsynced = false;
  writeError: string | null = null;
  droppedEvents = 0;
  private droppingReported = false;
  private retention: Promise<void> | null = null;
  private retentionAgain = false;

  constructor(
    readonly dataDir: string,
    readonly readOnly: boolean,
    private readonly opts: StoreOptions,
    private readonly log: BufferLog,
    readonly damage: DamageLog,
  ) {}

  /** Reads what the data dir holds (see recovery.ts). */
  async load(): Promise<void> {
    const { segments, nextSeq } = await recoverSegments(this.dataDir, this.readOnly, this.log, this.damage);
    this.segments.push(...segments);
    this.nextSeq = nextSeq;
  }

  // ---- appending (hot path) ----

  append(events: readonly AmberEvent[]): void {
    const blockBytes = this.opts.blockBytes;
    for (let i = 0; i < events.length; i++) {
      let encoder = this.encoder;
      if (encoder === null) encoder = this.encoder = new BlockEncoder(blockBytes + blockBytes / 8);
      encoder.append(events[i]);
      if (encoder.byteLength >= blockBytes) this.closeBlock();
    }
  }

  /** Writes everything appended so far and syncs it. Write errors do not throw: see writeError. */
  async flush(): Promise<void> {
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

  snapshot(): StoreSnapshot {
    const memory = this.inFlight ? [this.inFlight, ...this.waiting] : this.waiting.slice();
    const open = this.encoder !== null && this.encoder.eventCount > 0 ? this.encoder.peek() : null;
    return { segments: this.segments.slice(), memory, open };
  }

  /** Appended, not yet in a segment. */
  memoryEvents(): number {
    let n = this.encoder?.eventCount ?? 0;
    for (const block of this.waiting) n += block.summary.count;
    if (this.inFlight) n += this.inFlight.summary.count;
    return n;
  }

  totalBytes(): number {
    let total = 0;
    for (const s of this.segments) total += s.size;
    return total;
  }

  private closeBlock(): void {
    const encoder = this.encoder;
    if (encoder === null || encoder.eventCount === 0) return;
    this.encoder = null;
    const { payload, summary } = encoder.finish();
    if (payload.length > MAX_PAYLOAD_BYTES) {
      // Only events far larger than any the sensor makes get here; a reader would refuse the block.
      this.droppedEvents += summary.count;
      this.log('error', 'event buffer: a block is larger than the format allows; its events are dropped', {
        bytes: payload.length,
        events: summary.count,
      });
      return;
    }
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
    while (this.memoryBytes > this.opts.maxMemoryBytes && this.waiting.length > 1) {
      // The newest events matter most for an incident: drop the oldest waiting block.
      const dropped = this.waiting.shift()!;
      this.memoryBytes -= dropped.memBytes;
      this.droppedEvents += dropped.summary.count;
      if (!this.droppingReported) {
        this.droppingReported = true;
        this.log('error', 'event buffer: events are not reaching the disk and memory is at its bound; dropping the oldest', {
          dataDir: this.dataDir,
          maxMemoryBytes: this.opts.maxMemoryBytes,
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
      if (this.totalBytes() > this.opts.maxBytes) void this.enforceRetention();
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
      const full = current.size + frameLen > this.opts.segmentBytes;
      const old = Date.now() - current.openedAt >= this.opts.segmentMaxAgeMs;
      if (full || old) await this.sealActive();
    }
    if (this.active) return this.active;
    const seq = this.nextSeq++;
    const file = path.join(this.dataDir, SEGMENTS_DIR, segmentFileName(seq));
    const fh = await createExclusive(file);
    try {
      await writeFully(fh, [segmentHeader()], 0);
    } catch (err) {
      await fh.close().catch(() => {});
      await fsp.unlink(file).catch(() => {}); // ours, created just now, empty
      throw err;
    }
    const segment: Segment = { seq, file, size: SEGMENT_HEADER_BYTES, blocks: [], heads: [], fh, openedAt: Date.now() };
    this.segments.push(segment);
    this.active = segment;
    return segment;
  }

  /** Closes the segment being written and writes its sidecar index. */
  async sealActive(): Promise<void> {
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
      { dataDir: this.dataDir, code, error: String(err), maxMemoryBytes: this.opts.maxMemoryBytes },
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

  /** Deletes the oldest sealed segments past maxBytes or maxAge, except those a freeze pins. */
  enforceRetention(): Promise<void> {
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
    const oldestKept = nowNs() - this.opts.maxAgeNs;
    let total = this.totalBytes();
    for (const segment of [...this.segments]) {
      if (segment === this.active) return;
      const newest = segmentMaxTs(segment);
      if (total <= this.opts.maxBytes && newest >= oldestKept) return;
      if (this.opts.isPinned(newest)) return;
      this.segments.splice(this.segments.indexOf(segment), 1);
      total -= segment.size;
      // Only segments recovery or the writer knows as Amber's own are in the list: unlink
      // removes the name (a link planted in their place would lose only itself).
      try {
        await fsp.unlink(segment.file).catch(ignoreMissing);
        await fsp.unlink(indexFileName(segment.file)).catch(ignoreMissing);
      } catch (err) {
        this.log('warn', 'event buffer: retention could not delete a segment', { file: segment.file, error: String(err) });
      }
    }
  }
}

function ignoreMissing(err: NodeJS.ErrnoException): void {
  if (err.code !== 'ENOENT') throw err;
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
