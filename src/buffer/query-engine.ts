/**
 * The query engine: matching events in time order from a store snapshot —
 * written blocks (skipped by their summary when they cannot match), blocks on
 * their way to the disk, and the open block's events straight from memory, so
 * a live query never closes (and so never fragments) the block being filled.
 * Damaged blocks are skipped and counted; the rest is returned.
 */
import type { FileHandle } from 'node:fs/promises';
import type { AmberEvent } from '../sensor/events';
import { decompressPayload } from './compression';
import { decodeBlockPayload } from './block-codec';
import { openRegular } from './datadir';
import type { DamageLog } from './damage';
import type { BlockInfo } from './frame';
import { blockMayMatch, eventMatcher, type QueryFilter, TimeMerge } from './query';
import type { Segment } from './recovery';
import { CorruptBlockError, readBlock } from './segment';
import type { MemoryBlock, StoreSnapshot } from './store';

type Source =
  | { minTs: number; segment: Segment; block: BlockInfo }
  | { minTs: number; memory: MemoryBlock }
  | { minTs: number; open: AmberEvent[] };

export interface VerifyResult {
  blocks: number;
  events: number;
  damagedBlocks: number;
}

export class QueryEngine {
  constructor(private readonly damage: DamageLog) {}

  /**
   * Matching events in time-ordered batches; `filter` must be validated by the caller.
   * `snapshot` is taken when reading starts, in the same step the block list is built:
   * a block written meanwhile is then seen once, on disk or in memory, never both.
   */
  async *batches(take: () => StoreSnapshot, filter: QueryFilter): AsyncGenerator<AmberEvent[]> {
    const snapshot = take();
    const sources: Source[] = [];
    for (const segment of snapshot.segments) {
      for (const block of segment.blocks) if (blockMayMatch(block, filter)) sources.push({ minTs: block.minTs, segment, block });
    }
    for (const memory of snapshot.memory) {
      if (blockMayMatch(memory.summary, filter)) sources.push({ minTs: memory.summary.minTs, memory });
    }
    if (snapshot.open) {
      const open = decodeBlockPayload(snapshot.open);
      let minTs = Infinity;
      for (const ev of open) if (ev.ts < minTs) minTs = ev.ts;
      sources.push({ minTs, open });
    }
    // Stable: equal minTs keep append order.
    sources.sort((a, b) => a.minTs - b.minTs);

    const remaining = new Map<Segment, number>();
    for (const s of sources) if ('segment' in s) remaining.set(s.segment, (remaining.get(s.segment) ?? 0) + 1);
    const handles = new Map<Segment, FileHandle | null>();
    const matches = eventMatcher(filter);
    const merge = new TimeMerge();
    // One block is read and decompressed ahead while the consumer works on the current one.
    let next: Promise<AmberEvent[]> | null = sources.length ? this.load(sources[0], handles, remaining) : null;
    try {
      for (let i = 0; i < sources.length; i++) {
        const events = await next!;
        next = i + 1 < sources.length ? this.load(sources[i + 1], handles, remaining) : null;
        merge.add(events.filter(matches));
        const ready = merge.take(i + 1 < sources.length ? sources[i + 1].minTs : Infinity);
        if (ready.length > 0) yield ready;
      }
    } finally {
      await next?.catch(() => {});
      for (const fh of handles.values()) await fh?.close();
    }
  }

  /** Reads and checks every written block (what `buffer stats --verify` reports). */
  async verify(snapshot: StoreSnapshot): Promise<VerifyResult> {
    const result: VerifyResult = { blocks: 0, events: 0, damagedBlocks: 0 };
    for (const segment of snapshot.segments) {
      let fh: FileHandle | null = null;
      try {
        fh = await openRegular(segment.file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // aged out since
        for (const block of segment.blocks) this.damage.report(segment.file, block.offset, String((err as Error).message));
        result.blocks += segment.blocks.length;
        result.damagedBlocks += segment.blocks.length;
        continue;
      }
      try {
        for (const block of segment.blocks) {
          result.blocks++;
          try {
            result.events += (await readBlock(fh, block)).length;
          } catch (err) {
            if (!(err instanceof CorruptBlockError)) throw err;
            result.damagedBlocks++;
            this.damage.report(segment.file, block.offset, err.message);
          }
        }
      } finally {
        await fh.close();
      }
    }
    return result;
  }

  private async load(source: Source, handles: Map<Segment, FileHandle | null>, remaining: Map<Segment, number>): Promise<AmberEvent[]> {
    if ('open' in source) return source.open;
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
      fh = await openRegular(segment.file).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') this.damage.report(segment.file, 0, `cannot open the segment: ${err.message}`);
        return null;
      });
      handles.set(segment, fh);
    }
    try {
      return fh ? await readBlock(fh, block) : [];
    } catch (err) {
      if (!(err instanceof CorruptBlockError)) throw err;
      this.damage.report(segment.file, block.offset, err.message);
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
}
