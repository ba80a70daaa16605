/** The pipeline on its own: sinks, batch subscribers, streams, filters, drops, failures, churn. */
import { setImmediate as tick } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { Pipeline, type StreamItem } from '../../src/pipeline/pipeline';
import type { AmberEvent } from '../../src/sensor/events';
import { CONTAINER_A, execEvent, openEvent, sequenceEvents, T0 } from '../helpers/buffer-events';
import { heapAfterGc } from '../helpers/heap';

const pids = (events: AmberEvent[]) => events.map((e) => e.pid);


describe('Pipeline', () => {
  it('hands every batch to the sink synchronously, before any subscriber, and subscribers later in order', async () => {
    const p = new Pipeline();
    const order: string[] = [];
    p.addSink((events) => order.push(`sink ${pids(events).join(',')}`));
    p.subscribe('detector', (events) => {
      order.push(`sub ${pids(events).join(',')}`);
    });
    p.publish(sequenceEvents(1, 2));
    expect(order).toEqual(['sink 1,2']);
    p.publish(sequenceEvents(3, 1));
    await tick();
    expect(order).toEqual(['sink 1,2', 'sink 3', 'sub 1,2,3']);
    expect(p.stats()).toEqual({ published: 3, failed: 0, subscribers: [{ name: 'detector', delivered: 3, dropped: 0, queued: 0 }] });
  });

  it('gives each subscriber only what its filter matches', async () => {
    const p = new Pipeline();
    const got: AmberEvent[] = [];
    p.subscribe('host execs', (events) => void got.push(...events), { filter: { types: ['exec'], scope: 'host' } });
    const hostExec = execEvent(T0, { containerId: '', pid: 7 });
    p.publish([execEvent(T0, { pid: 1 }), openEvent(T0, { containerId: '', pid: 2 }), hostExec]);
    await tick();
    expect(got).toEqual([hostExec]);
  });

  it('counts exactly what a slow subscriber had no room for, and the sink and a fast subscriber lose nothing', async () => {
    const p = new Pipeline();
    let sunk = 0;
    p.addSink((events) => {
      sunk += events.length;
    });
    const fast: number[] = [];
    p.subscribe('fast', (events) => void fast.push(...pids(events)));
    let release!: () => void;
    const slowGot: number[] = [];
    const slow = p.subscribe(
      'slow',
      (events) => {
        slowGot.push(...pids(events));
        return new Promise<void>((r) => {
          release = r;
        });
      },
      { maxQueued: 10 },
    );
    p.publish(sequenceEvents(0, 5)); // delivered at once, then the listener hangs
    await tick();
    for (let i = 0; i < 10; i++) p.publish(sequenceEvents(5 + i * 4, 4)); // 40 more: 10 fit, 30 dropped
    await tick();
    expect(slow.stats()).toEqual({ name: 'slow', delivered: 5, dropped: 30, queued: 10 });
    release();
    await tick();
    await tick();
    expect(slowGot).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    expect(slow.stats()).toEqual({ name: 'slow', delivered: 15, dropped: 30, queued: 0 });
    expect(sunk).toBe(45);
    expect(fast).toEqual(Array.from({ length: 45 }, (_, i) => i));
  });

  it('removes a subscriber that throws, logs it once, and the others go on', async () => {
    const logged: Record<string, unknown>[] = [];
    const p = new Pipeline((obj) => logged.push(obj));
    const got: number[] = [];
    p.subscribe('bad', () => {
      throw new Error('boom');
    });
    p.subscribe('rejects', () => Promise.reject(new Error('async boom')));
    p.subscribe('good', (events) => void got.push(...pids(events)));
    p.publish(sequenceEvents(1, 1));
    await tick();
    await tick();
    p.publish(sequenceEvents(2, 1));
    await tick();
    expect(got).toEqual([1, 2]);
    expect(logged).toEqual([
      { event: 'subscriber-failed', subscriber: 'bad', error: 'boom' },
      { event: 'subscriber-failed', subscriber: 'rejects', error: 'async boom' },
    ]);
    expect(p.stats().failed).toBe(2);
    expect(p.stats().subscribers.map((s) => s.name)).toEqual(['good']);
  });

  it('streams events in order with a note where its queue overflowed, and ends when closed', async () => {
    const p = new Pipeline();
    const stream = p.stream('client', { maxQueued: 3, filter: { container: CONTAINER_A.slice(0, 6) } });
    p.publish(sequenceEvents(1, 2));
    p.publish(sequenceEvents(3, 4)); // 1 fits, 3 dropped
    const items: StreamItem[] = [];
    const reading = (async () => {
      for await (const item of stream) {
        items.push(item);
        if (items.length === 2) p.publish(sequenceEvents(10, 1));
      }
    })();
    await tick();
    await tick();
    stream.close();
    await reading;
    expect(items.map((i) => ('dropped' in i ? { dropped: i.dropped } : pids(i.events)))).toEqual([
      [1, 2, 3],
      { dropped: 3 },
      [10],
    ]);
    expect(stream.stats()).toEqual({ name: 'client', delivered: 4, dropped: 3, queued: 0 });
  });

  it('rejects a filter that cannot match what was meant', () => {
    const p = new Pipeline();
    expect(() => p.stream('x', { filter: { container: 'abc', scope: 'host' } })).toThrow('exclude each other');
    expect(() => p.stream('x', { maxQueued: 0 })).toThrow('maxQueued');
    expect(p.stats().subscribers).toEqual([]);
  });

  it('subscribes and unsubscribes 1000 times while publishing without keeping anything', async () => {
    const p = new Pipeline();
    let sunk = 0;
    p.addSink((events) => {
      sunk += events.length;
    });
    const before = heapAfterGc();
    for (let i = 0; i < 1000; i++) {
      const s = i % 2 ? p.stream(`s${i}`) : p.subscribe(`b${i}`, () => {});
      p.publish(sequenceEvents(i, 10));
      if (i % 3 === 0) await tick();
      s.close();
    }
    await tick();
    expect(p.stats().subscribers).toEqual([]);
    expect(sunk).toBe(10_000);
    expect(heapAfterGc() - before).toBeLessThan(8 * 1024 * 1024);
  });

  it('ends open streams on close and accepts nothing after', async () => {
    const p = new Pipeline();
    const stream = p.stream('c');
    const done = (async () => {
      const items: StreamItem[] = [];
      for await (const item of stream) items.push(item);
      return items;
    })();
    p.close();
    expect(await done).toEqual([]);
    let sunk = 0;
    p.addSink(() => sunk++);
    p.publish(sequenceEvents(1, 1));
    expect(sunk).toBe(0);
  });
});
