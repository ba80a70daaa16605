/**
 * The pipeline in the real agent (startAgent: sensor -> pipeline -> buffer
 * sink) during a real open storm, with a subscriber that throws and one that
 * never reads beside the buffer: the buffer holds every event of the storm,
 * the slow subscriber's drop counter is exactly what it missed, the throwing
 * one is logged and removed.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { execFileSync } from 'node:child_process';
import { runChild } from '../../bench/workloads';
import { startAgent } from '../../src/agent';
import { EventBuffer } from '../../src/buffer';
import { loadConfig } from '../../src/config';
import { compileFilter, type EventFilter } from '../../src/filter';
import { heapAfterGc } from '../helpers/heap';

const OPENS = 200_000;


/** The API on a socket of the test's own, never the node's /run/amber/amber.sock. */
function ownSocket(dir: string): Array<[string[], unknown]> {
  return [[['api', 'listen'], [`unix://${dir}-run/amber.sock`]]];
}
const SLOW_QUEUE = 1000;

describe('the pipeline in the agent under an open storm', () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-pipeline-'));
  afterAll(() => {
    fs.rmSync(dataDir, { recursive: true, force: true });
    fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
  });

  it('loses no buffer event, counts the slow subscriber\'s drops exactly and removes the throwing one', async () => {
    // the bench's storm program (bench/workloads/open-storm.c), built here: bench/workloads.ts locates it from dist/
    const binDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-storm-'));
    onTestFinished(() => fs.rmSync(binDir, { recursive: true, force: true }));
    const openStorm = path.join(binDir, 'open-storm'); // its comm, by which the storm's events are told apart
    execFileSync('cc', ['-O2', '-o', openStorm, path.resolve(__dirname, '../../bench/workloads/open-storm.c')]);
    const logLines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) logLines.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    });
    const agent = await startAgent(loadConfig({ overrides: [[['dataDir'], dataDir], ...ownSocket(dataDir)] }), pino({ level: 'info' }, sink));
    let closed = false;
    try {
      const { pipeline } = agent;
      // what the slow subscriber should have been offered: every open-storm event, counted by a sink with the same filter
      const slowFilter: EventFilter = { comm: 'open-storm' };
      const matches = compileFilter(slowFilter);
      let offered = 0;
      pipeline.addSink((events) => {
        for (const e of events) if (matches(e)) offered++;
      });
      let thrownAt = 0;
      pipeline.subscribe('throws', (events) => {
        thrownAt += events.length;
        throw new Error('subscriber bug');
      });
      const slow = pipeline.stream('never-reads', { filter: slowFilter, maxQueued: SLOW_QUEUE });

      const run = await runChild(openStorm, [String(OPENS)]);
      const sensorStats = await agent.sensor.stop();
      await new Promise((resolve) => setImmediate(resolve)); // the last batch reaches the subscribers' queues

      // the slow one: never read, so it holds its queue and dropped exactly the rest of what it was offered
      expect(offered).toBeGreaterThanOrEqual(OPENS);
      const s = slow.stats();
      expect(s).toEqual({ name: 'never-reads', delivered: 0, queued: SLOW_QUEUE, dropped: offered - SLOW_QUEUE });
      // the throwing one: called once, logged, removed; the others stay
      expect(thrownAt).toBeGreaterThan(0);
      const stats = pipeline.stats();
      expect(stats.failed).toBe(1);
      expect(stats.subscribers.map((x) => x.name)).toEqual(['detector', 'never-reads']);
      expect(stats.subscribers[0].dropped).toBe(0); // the agent's detector kept up with the storm
      expect(logLines.filter((l) => l.event === 'subscriber-failed')).toEqual([
        expect.objectContaining({ subscriber: 'throws', error: 'subscriber bug', msg: 'a pipeline subscriber threw and was removed' }),
      ]);
      expect(Object.values(sensorStats.drops).reduce((a, b) => a + b, 0)).toBe(0);

      await agent.close();
      closed = true;
      // the buffer: every one of the storm's own opens, exactly
      const buffer = await EventBuffer.openReadOnly(dataDir);
      let stormOpens = 0;
      try {
        for await (const batch of buffer.queryBatches({ pid: run.pid, types: ['open'] })) {
          for (const e of batch) if (e.type === 'open' && e.comm === 'open-storm' && e.path === '/dev/null') stormOpens++;
        }
      } finally {
        await buffer.close();
      }
      expect(stormOpens).toBe(OPENS);
    } finally {
      if (!closed) await agent.close();
    }
  });

  it('takes 1000 subscribe/unsubscribe cycles during a storm: nothing kept, and the buffer still holds every storm event', async () => {
    const binDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-storm-'));
    onTestFinished(() => fs.rmSync(binDir, { recursive: true, force: true }));
    const openStorm = path.join(binDir, 'open-storm');
    execFileSync('cc', ['-O2', '-o', openStorm, path.resolve(__dirname, '../../bench/workloads/open-storm.c')]);
    const churnDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-churn-'));
    onTestFinished(() => {
      fs.rmSync(churnDir, { recursive: true, force: true });
      fs.rmSync(`${churnDir}-run`, { recursive: true, force: true });
    });
    const agent = await startAgent(loadConfig({ overrides: [[['dataDir'], churnDir], ...ownSocket(churnDir)] }), pino({ level: 'warn' }));
    let closed = false;
    try {
      const { pipeline } = agent;
      const baseline = pipeline.stats().subscribers.length;
      const heapBefore = heapAfterGc();
      const storm = runChild(openStorm, [String(OPENS)]);
      let cycles = 0;
      let seen = 0;
      while (cycles < 1000) {
        const stream = pipeline.stream(`churn-${cycles}`, { filter: { comm: 'open-storm' }, maxQueued: 512 });
        const batch = pipeline.subscribe(`churn-b-${cycles}`, (events) => void (seen += events.length), { maxQueued: 512 });
        if (cycles % 10 === 0) {
          // read one item now and then, as a live client does
          const it = stream[Symbol.asyncIterator]();
          await Promise.race([it.next(), new Promise((r) => setTimeout(r, 5))]);
        } else await new Promise((r) => setImmediate(r));
        stream.close();
        batch.close();
        cycles++;
      }
      const run = await storm;
      await agent.sensor.stop();
      expect(seen).toBeGreaterThan(0);
      // the counters return: no subscriber left behind, none failed
      expect(pipeline.stats().subscribers.length).toBe(baseline);
      expect(pipeline.stats().failed).toBe(0);
      // the heap returns: 2000 subscriptions with queues of up to 512 events each leave no trace of them
      expect(heapAfterGc() - heapBefore).toBeLessThan(64 * 1024 * 1024);
      await agent.close();
      closed = true;
      const buffer = await EventBuffer.openReadOnly(churnDir);
      let stormOpens = 0;
      try {
        for await (const b of buffer.queryBatches({ pid: run.pid, types: ['open'] })) {
          for (const e of b) if (e.type === 'open' && e.comm === 'open-storm' && e.path === '/dev/null') stormOpens++;
        }
      } finally {
        await buffer.close();
      }
      expect(stormOpens).toBe(OPENS);
    } finally {
      if (!closed) await agent.close();
    }
  });
});
