/**
 * Query filters (which blocks can be skipped, which events match) and the
 * time-ordered merge of decoded blocks.
 */
import { type AmberEvent, EVENT_TYPES, type EventType } from '../sensor/events';
import { type BlockSummary, CONTAINER_SUMMARY_CHARS } from './frame';

export interface QueryFilter {
  /** Inclusive lower bound, ns since the epoch. */
  since?: number;
  /** Inclusive upper bound, ns since the epoch. */
  until?: number;
  types?: readonly EventType[];
  /** containerId prefix; "host" selects host processes (containerId ""). */
  container?: string;
  pid?: number;
  /** Exact process name. */
  comm?: string;
  /** Substring of path / exePath / filename / DNS name / args joined with spaces. */
  match?: string;
}

export const HOST_CONTAINER = 'host';

/** Rejects filters that cannot mean what the caller wanted, with a message saying why. */
export function validateFilter(filter: QueryFilter): void {
  const { since, until, types, container, pid, comm, match } = filter;
  if (since !== undefined && !Number.isFinite(since)) throw new RangeError('since must be a finite number of ns');
  if (until !== undefined && !Number.isFinite(until)) throw new RangeError('until must be a finite number of ns');
  if (since !== undefined && until !== undefined && since > until) {
    throw new RangeError('since is after until: the time range is empty');
  }
  if (types !== undefined) {
    for (const t of types) {
      if (!(EVENT_TYPES as readonly string[]).includes(t)) {
        throw new RangeError(`unknown event type "${t}" (known: ${EVENT_TYPES.join(', ')})`);
      }
    }
  }
  if (container !== undefined && container === '') throw new RangeError('container must not be empty');
  if (pid !== undefined && !(Number.isInteger(pid) && pid >= 0)) throw new RangeError('pid must be a non-negative integer');
  if (comm !== undefined && comm === '') throw new RangeError('comm must not be empty');
  if (match !== undefined && match === '') throw new RangeError('match must not be empty');
}

/** Whether a block may hold matching events, from its summary alone. */
export function blockMayMatch(block: BlockSummary, filter: QueryFilter): boolean {
  if (block.count === 0) return false;
  if (filter.since !== undefined && block.maxTs < filter.since) return false;
  if (filter.until !== undefined && block.minTs > filter.until) return false;
  if (filter.types && !filter.types.some((t) => block.typeCounts[EVENT_TYPES.indexOf(t)] > 0)) return false;
  if (filter.container !== undefined && block.containers) {
    const wanted = filter.container;
    if (wanted === HOST_CONTAINER) return block.containers.includes('');
    const head = wanted.slice(0, CONTAINER_SUMMARY_CHARS);
    const matches =
      wanted.length <= CONTAINER_SUMMARY_CHARS
        ? (c: string) => c !== '' && c.startsWith(head)
        : (c: string) => c === head;
    if (!block.containers.some(matches)) return false;
  }
  return true;
}

/** Tolerates events that miss contract fields (stored as maps): they just do not match on those fields. */
export function eventMatcher(filter: QueryFilter): (ev: AmberEvent) => boolean {
  const { since, until, container, pid, comm, match } = filter;
  const types = filter.types ? new Set<string>(filter.types) : undefined;
  return (ev) => {
    if (since !== undefined && !(ev.ts >= since)) return false;
    if (until !== undefined && !(ev.ts <= until)) return false;
    if (types && !types.has(ev.type)) return false;
    if (container !== undefined) {
      const id = typeof ev.containerId === 'string' ? ev.containerId : '';
      if (container === HOST_CONTAINER ? id !== '' : !id.startsWith(container)) return false;
    }
    if (pid !== undefined && ev.pid !== pid) return false;
    if (comm !== undefined && ev.comm !== comm) return false;
    if (match !== undefined && !eventText(ev).some((text) => text.includes(match))) return false;
    return true;
  };
}

/** The texts `match` searches in. */
function eventText(ev: AmberEvent): string[] {
  let texts: unknown[];
  switch (ev.type) {
    case 'open':
      texts = [ev.path];
      break;
    case 'exec':
      texts = [ev.exePath, ev.filename, Array.isArray(ev.args) ? ev.args.join(' ') : undefined];
      break;
    case 'dns':
      texts = [ev.name];
      break;
    default:
      texts = [];
  }
  return texts.filter((t): t is string => typeof t === 'string');
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
