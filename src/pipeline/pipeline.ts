/**
 * One stream of decoded, container-named events, many consumers.
 *
 * The sensor publishes each batch once. The recorder (the buffer) is a sink:
 * it is called synchronously, first, with every event, so when it cannot keep
 * up the sensor's own backpressure applies and nothing is lost. Every other
 * consumer subscribes with a filter and a bounded queue: a slow one loses the
 * events its queue has no room for, counted, and a throwing one is removed
 * and logged; neither can stop the others or cost the sink an event.
 * Subscribers only receive: none of them reaches back into the sensor.
 */
import { compileFilter, type ContainerLookup, type EventFilter, type EventMatcher, isEmptyFilter, validateFilter } from '../filter';
import type { AmberEvent } from '../sensor/events';

/** Events a subscriber may have queued before further ones are dropped (counted). */
export const DEFAULT_MAX_QUEUED = 65_536;

export type BatchListener = (events: AmberEvent[]) => void | Promise<void>;
export type PipelineLog = (obj: Record<string, unknown>, msg: string) => void;

export interface SubscribeOptions {
  filter?: EventFilter;
  /** Queued events at most; what does not fit is dropped and counted. */
  maxQueued?: number;
}

export interface SubscriberStats {
  name: string;
  /** Events handed to the subscriber. */
  delivered: number;
  /** Matching events its queue had no room for. */
  dropped: number;
  /** Events waiting for it now. */
  queued: number;
}

export interface PipelineStats {
  /** Events published. */
  published: number;
  subscribers: SubscriberStats[];
  /** Subscribers removed because they threw. */
  failed: number;
}

export interface Subscription {
  readonly name: string;
  stats(): SubscriberStats;
  /** Stops delivery and frees the queue. Idempotent. */
  close(): void;
}

/** What a stream yields: matching events in order, and a note wherever some were dropped. */
export type StreamItem = { events: AmberEvent[] } | { dropped: number };

export interface EventStream extends Subscription, AsyncIterable<StreamItem> {}

export class Pipeline {
  private sinks: BatchListener[] = [];
  private subscribers: Subscriber[] = [];
  private published = 0;
  private failed = 0;
  private drainScheduled = false;
  private closed = false;
  /** Container metadata by ID, for subscribers' pod/namespace/image filters (the join is never stored per event). */
  containers: ContainerLookup | undefined;

  constructor(private readonly log: PipelineLog = () => {}) {}

  /** The sensor's listener: hands one batch to the sink(s), then queues it for every subscriber. */
  readonly publish = (events: AmberEvent[]): void => {
    if (this.closed || events.length === 0) return;
    this.published += events.length;
    for (const sink of this.sinks) sink(events);
    let queued = false;
    for (const sub of this.subscribers) queued = sub.offer(events) || queued;
    if (queued) this.scheduleDrain();
  };

  /**
   * A consumer that must see every event (the recorder): called synchronously
   * on publish, before any subscriber. Its time is the sensor's time, so it
   * must be fast; an exception here is the publisher's problem, as it would be
   * without the pipeline.
   */
  addSink(sink: (events: AmberEvent[]) => void): () => void {
    this.sinks = [...this.sinks, sink];
    return () => {
      this.sinks = this.sinks.filter((s) => s !== sink);
    };
  }

  /**
   * A batch consumer (detector, metrics): called with the matching events of
   * each batch, in order, outside the publish call. A listener that returns a
   * promise gets the next batch after it settles; meanwhile its queue fills.
   */
  subscribe(name: string, listener: BatchListener, options: SubscribeOptions = {}): Subscription {
    const sub = new Subscriber(name, options, this, listener);
    this.add(sub);
    return sub;
  }

  /** A stream consumer (a live API client): `for await (const item of pipeline.stream(...))`. */
  stream(name: string, options: SubscribeOptions = {}): EventStream {
    const sub = new Subscriber(name, options, this, undefined);
    this.add(sub);
    return sub;
  }

  stats(): PipelineStats {
    return { published: this.published, subscribers: this.subscribers.map((s) => s.stats()), failed: this.failed };
  }

  /** Ends every stream (their iterators finish) and refuses new events. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const sub of this.subscribers) sub.close();
    this.sinks = [];
  }

  private add(sub: Subscriber): void {
    if (this.closed) {
      sub.close();
      return;
    }
    this.subscribers = [...this.subscribers, sub];
  }

  /** @internal */
  remove(sub: Subscriber): void {
    this.subscribers = this.subscribers.filter((s) => s !== sub);
  }

  /** @internal A listener threw: it is removed, the others go on. */
  fail(sub: Subscriber, err: unknown): void {
    this.failed++;
    this.log(
      { event: 'subscriber-failed', subscriber: sub.name, error: err instanceof Error ? err.message : String(err) },
      'a pipeline subscriber threw and was removed',
    );
    sub.close();
  }

  private scheduleDrain(): void {
    if (this.drainScheduled) return;
    this.drainScheduled = true;
    setImmediate(() => {
      this.drainScheduled = false;
      for (const sub of this.subscribers) sub.drain();
    });
  }
}

class Subscriber implements EventStream {
  /** Batches in order; a number marks a gap of that many dropped events where it happened. */
  private queue: (AmberEvent[] | number)[] = [];
  private queued = 0;
  private delivered = 0;
  private dropped = 0;
  private busy = false;
  private closed = false;
  private readonly matches: EventMatcher | null;
  private readonly maxQueued: number;
  /** A stream consumer waiting in next(). */
  private waiter: ((r: IteratorResult<StreamItem>) => void) | null = null;

  constructor(
    readonly name: string,
    options: SubscribeOptions,
    private readonly pipeline: Pipeline,
    private readonly listener: BatchListener | undefined,
  ) {
    const filter = options.filter ?? {};
    validateFilter(filter);
    this.matches = isEmptyFilter(filter) ? null : compileFilter(filter, (id) => pipeline.containers?.(id));
    this.maxQueued = options.maxQueued ?? DEFAULT_MAX_QUEUED;
    if (!(Number.isInteger(this.maxQueued) && this.maxQueued > 0)) throw new RangeError('maxQueued must be a positive integer');
  }

  /** Queues the matching events of a batch; returns whether anything was queued. */
  offer(events: AmberEvent[]): boolean {
    if (this.closed) return false;
    let mine = events;
    if (this.matches) {
      const m = this.matches;
      mine = [];
      for (const e of events) if (m(e)) mine.push(e);
      if (mine.length === 0) return false;
    }
    const room = this.maxQueued - this.queued;
    if (mine.length <= room) {
      this.queue.push(mine);
      this.queued += mine.length;
      return true;
    }
    if (room > 0) {
      this.queue.push(mine.slice(0, room));
      this.queued += room;
    }
    const lost = mine.length - room;
    this.dropped += lost;
    const last = this.queue.length - 1;
    if (typeof this.queue[last] === 'number') (this.queue[last] as number) += lost;
    else this.queue.push(lost);
    return room > 0 || this.waiter !== null;
  }

  /** Hands what is queued to the listener, or to a waiting stream reader. */
  drain(): void {
    if (this.closed || this.busy) return;
    if (this.listener) {
      const events = this.takeAll();
      if (events.length === 0) return;
      let result: void | Promise<void>;
      try {
        result = this.listener(events);
      } catch (err) {
        this.pipeline.fail(this, err);
        return;
      }
      if (result && typeof (result as Promise<void>).then === 'function') {
        this.busy = true;
        (result as Promise<void>).then(
          () => {
            this.busy = false;
            this.drain();
          },
          (err: unknown) => {
            this.busy = false;
            this.pipeline.fail(this, err);
          },
        );
      }
      return;
    }
    if (this.waiter && this.queue.length > 0) {
      const resolve = this.waiter;
      this.waiter = null;
      resolve({ value: this.nextItem(), done: false });
    }
  }

  /** Everything queued, gaps left out (a listener reads its drops from stats()); usually one batch: no copy. */
  private takeAll(): AmberEvent[] {
    const q = this.queue;
    this.queue = [];
    this.queued = 0;
    const batches = q.filter((b): b is AmberEvent[] => typeof b !== 'number');
    const events = batches.length === 1 ? batches[0] : batches.flat();
    this.delivered += events.length;
    return events;
  }

  /** The events queued up to the next gap, or the gap's note: a stream reader sees where it lost events. */
  private nextItem(): StreamItem {
    const head = this.queue[0];
    if (typeof head === 'number') {
      this.queue.shift();
      return { dropped: head };
    }
    let end = 1;
    while (end < this.queue.length && typeof this.queue[end] !== 'number') end++;
    const batches = this.queue.splice(0, end) as AmberEvent[][];
    const events = batches.length === 1 ? batches[0] : batches.flat();
    this.queued -= events.length;
    this.delivered += events.length;
    return { events };
  }

  stats(): SubscriberStats {
    return { name: this.name, delivered: this.delivered, dropped: this.dropped, queued: this.queued };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.queued = 0;
    this.pipeline.remove(this);
    if (this.waiter) {
      const resolve = this.waiter;
      this.waiter = null;
      resolve({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<StreamItem> {
    if (this.listener) throw new TypeError(`subscriber ${this.name} has a listener; use pipeline.stream() to iterate`);
    return {
      next: () => {
        if (this.queue.length > 0) return Promise.resolve({ value: this.nextItem(), done: false });
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        if (this.waiter) return Promise.reject(new Error(`stream ${this.name} is already being read`));
        return new Promise((resolve) => {
          this.waiter = resolve;
        });
      },
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
