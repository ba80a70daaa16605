/**
 * Which blocks a query can skip (from their summaries), and the time-ordered
 * merge of decoded blocks.
 */
import { compileFilter, type EventFilter, validateFilter } from '../filter';
import { type AmberEvent, EVENT_TYPES } from '../sensor/events';
import { type BlockSummary, CONTAINER_SUMMARY_CHARS } from './frame';

/** The buffer filters with the one event filter (src/filter.ts); blocks are pruned by their summaries first. */
export type QueryFilter = EventFilter;
export { validateFilter };
export const eventMatcher = compileFilter;

/** Whether a block may hold matching events, from its summary alone. */
export function blockMayMatch(block: BlockSummary, filter: QueryFilter): boolean {
  if (block.count === 0) return false;
  if (filter.since !== undefined && block.maxTs < filter.since) return false;
  if (filter.until !== undefined && block.minTs > filter.until) return false;
  if (filter.types && !filter.types.some((t) => block.typeCounts[EVENT_TYPES.indexOf(t)] > 0)) return false;
  if (block.containers) {
    const { containers } = block;
    if (filter.scope === 'host' && !containers.includes('')) return false;
    if (filter.scope === 'containers' && !containers.some((c) => c !== '')) return false;
    if (filter.container !== undefined) {
      const wanted = filter.container;
      const head = wanted.slice(0, CONTAINER_SUMMARY_CHARS);
      const matches =
        wanted.length <= CONTAINER_SUMMARY_CHARS
          ? (c: string) => c !== '' && c.startsWith(head)
          : (c: string) => c === head;
      if (!containers.some(matches)) return false;
    }
  }
  return true;
}

/** A decoded, time-sorted block waiting in the merge. */
interface Run {
  events: AmberEvent[];
  pos: number;
  /** Load order: breaks ts ties so equal timestamps keep their append order. */
  seq: number;
}

/**
 * K-way merge of sorted runs. Blocks arrive ordered by their minTs; an event is
 * emitted once no block still to be loaded can hold an earlier one, so only
 * blocks whose time ranges overlap are held in memory at once.
 */
export class TimeMerge {
  private readonly heap: Run[] = [];
  private seq = 0;

  add(events: AmberEvent[]): void {
    if (events.length === 0) return;
    if (!isSortedByTs(events)) events.sort((a, b) => a.ts - b.ts); // stable: ties keep append order
    this.push({ events, pos: 0, seq: this.seq++ });
  }

  /** Removes and returns, in order, every event with ts < bound (all of them when bound is Infinity). */
  take(bound: number): AmberEvent[] {
    const h = this.heap;
    if (h.length === 1) {
      // One run (blocks that do not overlap in time, the usual case): a slice, no heap work.
      const run = h[0];
      let end = run.pos;
      while (end < run.events.length && (bound === Infinity || run.events[end].ts < bound)) end++;
      const out = run.events.slice(run.pos, end);
      run.pos = end;
      if (end === run.events.length) h.pop();
      return out;
    }
    const out: AmberEvent[] = [];
    while (h.length > 0) {
      const top = h[0];
      const ev = top.events[top.pos];
      if (bound !== Infinity && !(ev.ts < bound)) break;
      out.push(ev);
      top.pos++;
      if (top.pos === top.events.length) this.pop();
      else this.siftDown(0);
    }
    return out;
  }

  private less(a: Run, b: Run): boolean {
    const ta = a.events[a.pos].ts;
    const tb = b.events[b.pos].ts;
    return ta < tb || (ta === tb && a.seq < b.seq);
  }

  private push(run: Run): void {
    const h = this.heap;
    h.push(run);
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(h[i], h[parent])) break;
      [h[i], h[parent]] = [h[parent], h[i]];
      i = parent;
    }
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      this.siftDown(0);
    }
  }

  private siftDown(i: number): void {
    const h = this.heap;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && this.less(h[l], h[m])) m = l;
      if (r < h.length && this.less(h[r], h[m])) m = r;
      if (m === i) return;
      [h[i], h[m]] = [h[m], h[i]];
      i = m;
    }
  }
}

/** Flattens batches into single events, with one cheap promise per event instead of a generator step. */
export function eventsOf(batches: AsyncGenerator<AmberEvent[]>): AsyncIterableIterator<AmberEvent> {
  let batch: AmberEvent[] = [];
  let index = 0;
  const iterator: AsyncIterableIterator<AmberEvent> = {
    next(): Promise<IteratorResult<AmberEvent>> {
      if (index < batch.length) return Promise.resolve({ done: false, value: batch[index++] });
      return batches.next().then((r): IteratorResult<AmberEvent> | Promise<IteratorResult<AmberEvent>> => {
        if (r.done) return { done: true, value: undefined };
        batch = r.value;
        index = 0;
        return iterator.next();
      });
    },
    async return(): Promise<IteratorResult<AmberEvent>> {
      await batches.return(undefined);
      return { done: true, value: undefined };
    },
    [Symbol.asyncIterator]() {
      return iterator;
    },
  };
  return iterator;
}

function isSortedByTs(events: AmberEvent[]): boolean {
  for (let i = 1; i < events.length; i++) if (events[i].ts < events[i - 1].ts) return false;
  return true;
}
