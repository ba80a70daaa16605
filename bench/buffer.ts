/**
 * Event buffer benchmark: append rate, stored bytes per event, lz4 vs zstd,
 * and a 1-minute window query in a full 256 MiB buffer.
 * Run: npx tsc -p tsconfig.json && node dist/bench/buffer.js
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { compress as zstdCompress, decompress as zstdDecompress } from '@mongodb-js/zstd';
import { compressSync as lz4Compress, uncompressSync as lz4Decompress } from 'lz4-napi';
import { Packr } from 'msgpackr';
import { BlockEncoder } from '../src/buffer/block-codec';
import { EventBuffer, type QueryFilter } from '../src/buffer';
import type { AmberEvent, CommonFields } from '../src/sensor/events';
import pino from 'pino';
import { startAgent } from '../src/agent';
import { loadConfig } from '../src/config';
import { countTotal } from '../src/sensor/sensor';
import { realisticEvents } from './mix';
import { compileWorkloads, median, runChild } from './workloads';

const MiB = 1024 * 1024;
const BATCH = 1024;

/** The same event rebuilt as `{ ...common, type, … }` (as src/sensor/sensor.ts still builds DNS events). */
function spreadBuilt(ev: AmberEvent): AmberEvent {
  const { type, ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns } = ev;
  const common: CommonFields = { type, ts, pid, tid, ppid, uid, gid, comm, cgroupId, containerId, mntns, netns };
  switch (ev.type) {
    case 'open':
      return { ...common, type: 'open', path: ev.path, flags: ev.flags, flagNames: ev.flagNames, mode: ev.mode, ret: ev.ret, pathTruncated: ev.pathTruncated };
    case 'exec':
      return { ...common, type: 'exec', filename: ev.filename, exePath: ev.exePath, args: ev.args, argsTruncated: ev.argsTruncated, upperLayer: ev.upperLayer, fileless: ev.fileless, script: ev.script, pathTruncated: ev.pathTruncated };
    case 'connect':
      return { ...common, type: 'connect', proto: ev.proto, family: ev.family, saddr: ev.saddr, sport: ev.sport, daddr: ev.daddr, dport: ev.dport, ret: ev.ret };
    default:
      return { ...common, ...ev };
  }
}

function batches(next: () => AmberEvent, count: number): AmberEvent[][] {
  const out: AmberEvent[][] = [];
  for (let i = 0; i < count; i += BATCH) out.push(Array.from({ length: Math.min(BATCH, count - i) }, next));
  return out;
}

const seconds = (start: bigint) => Number(process.hrtime.bigint() - start) / 1e9;
const fmt = (n: number, digits = 1) => n.toFixed(digits);
const mega = (n: number) => `${fmt(n / 1e6, 2)}M`;

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(path.join(tmpdir(), 'amber-bench-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function appendRate(sample: AmberEvent[][], passes: number) {
  return withDir(async (dir) => {
    const buffer = await EventBuffer.open({ dataDir: dir, maxBytes: 1024 * MiB });
    let appendSeconds = 0;
    let events = 0;
    const wall = process.hrtime.bigint();
    for (let pass = 0; pass < passes; pass++) {
      for (const batch of sample) {
        const start = process.hrtime.bigint();
        buffer.append(batch);
        appendSeconds += seconds(start);
        events += batch.length;
        await yieldToLoop(); // lets compression results and writes complete, as the agent's loop would
      }
    }
    await buffer.flush();
    const wallSeconds = seconds(wall);
    const stats = buffer.stats();
    await buffer.close();
    return { perSecond: events / appendSeconds, wallPerSecond: events / wallSeconds, bytesPerEvent: stats.bytes / stats.events, stats };
  });
}

function packrRate(sample: AmberEvent[][]): number {
  const packr = new Packr({ useRecords: true });
  const events = sample.flat();
  const perBlock = 6000; // ~1 MiB of msgpack, like the buffer's blocks
  let best = 0;
  for (let round = 0; round < 3; round++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < events.length; i += perBlock) packr.pack(events.slice(i, i + perBlock));
    best = Math.max(best, events.length / seconds(start));
  }
  return best;
}

function rawBlocks(sample: AmberEvent[][]): Buffer[] {
  const blocks: Buffer[] = [];
  let encoder = new BlockEncoder(MiB);
  for (const ev of sample.flat()) {
    encoder.append(ev);
    if (encoder.byteLength >= MiB) {
      blocks.push(Buffer.from(encoder.finish().payload));
      encoder = new BlockEncoder(MiB);
    }
  }
  if (encoder.eventCount > 0) blocks.push(Buffer.from(encoder.finish().payload));
  return blocks;
}

async function compressionNumbers(blocks: Buffer[], events: number) {
  const raw = blocks.reduce((n, b) => n + b.length, 0);
  let start = process.hrtime.bigint();
  const lz4 = blocks.map((b) => lz4Compress(b));
  const lz4Comp = seconds(start);
  start = process.hrtime.bigint();
  for (const b of lz4) lz4Decompress(b);
  const lz4Dec = seconds(start);
  start = process.hrtime.bigint();
  const zstd: Buffer[] = [];
  for (const b of blocks) zstd.push(await zstdCompress(b)); // one at a time: single-thread speed
  const zstdComp = seconds(start);
  start = process.hrtime.bigint();
  for (const b of zstd) await zstdDecompress(b);
  const zstdDec = seconds(start);
  const row = (name: string, parts: Buffer[], comp: number, dec: number) => {
    const stored = parts.reduce((n, b) => n + b.length, 0);
    return `${name.padEnd(6)} ratio ${fmt(raw / stored, 2).padStart(5)}  ${fmt(stored / events).padStart(5)} B/event  compress ${fmt(raw / comp / MiB, 0).padStart(5)} MiB/s  decompress ${fmt(raw / dec / MiB, 0).padStart(5)} MiB/s`;
  };
  return [
    `raw msgpack: ${fmt(raw / events)} B/event in ${blocks.length} blocks of ~1 MiB`,
    row('lz4', lz4, lz4Comp, lz4Dec),
    row('zstd', zstd, zstdComp, zstdDec),
  ];
}

async function fullBufferQuery() {
  return withDir(async (dir) => {
    const maxBytes = 256 * MiB;
    const spanSeconds = 3600;
    const startTs = Date.now() * 1e6 - spanSeconds * 1e9;
    // ~16M events fill 256 MiB at the measured size; spread them over the last hour.
    const next = realisticEvents(7, startTs, 16e6 / spanSeconds);
    const buffer = await EventBuffer.open({ dataDir: dir, maxBytes });
    const fillStart = process.hrtime.bigint();
    let appended = 0;
    while (buffer.stats().bytes < maxBytes * 0.97) {
      for (let i = 0; i < 64; i++) {
        buffer.append(Array.from({ length: BATCH }, next));
        appended += BATCH;
        await yieldToLoop();
      }
    }
    await buffer.flush();
    const fillSeconds = seconds(fillStart);
    const stats = buffer.stats();
    const span = (stats.newestTs! - stats.oldestTs!) / 1e9;
    const since = stats.oldestTs! + ((stats.newestTs! - stats.oldestTs!) * 2) / 3;
    const timeQuery = async (label: string, filter: QueryFilter) => {
      let start = process.hrtime.bigint();
      let count = 0;
      for await (const ev of buffer.query(filter)) {
        void ev;
        count++;
      }
      const perEvent = seconds(start);
      start = process.hrtime.bigint();
      for await (const batch of buffer.queryBatches(filter)) void batch;
      const batched = seconds(start);
      return `${label}: ${count} events in ${fmt(perEvent * 1000, 0)} ms with query(), ${fmt(batched * 1000, 0)} ms with queryBatches() (target < 1 s)`;
    };
    const lines = [
      `filled: ${stats.events} events, ${fmt(stats.bytes / MiB)} MiB in ${stats.segments} segments, spanning ${fmt(span / 60)} min (${appended} appended, ${stats.droppedEvents} dropped, fill took ${fmt(fillSeconds)} s)`,
      await timeQuery('1-minute window, all events', { since, until: since + 60e9 }),
      await timeQuery('1-minute window, dns of one container', await oneContainersDns(buffer, since)),
    ];
    await buffer.close();
    return lines;
  });
}

async function oneContainersDns(buffer: EventBuffer, since: number): Promise<QueryFilter> {
  const window: QueryFilter = { since, until: since + 60e9, types: ['dns'] };
  for await (const ev of buffer.query({ since, types: ['dns'] })) {
    if (ev.containerId) return { ...window, container: ev.containerId.slice(0, 12) };
  }
  return { ...window, scope: 'host' };
}

async function main(): Promise<void> {
  const started = process.hrtime.bigint();
  console.log('amber event buffer benchmark (realistic mix: 60% open, 20% exec with 4 args, 10% connect, 10% dns)\n');
  await appendAndCompression();
  console.log('full 256 MiB buffer:');
  for (const line of await fullBufferQuery()) console.log(`  ${line}`);
  console.log('\nthe agent end to end under the sensor\'s open storm (startAgent: sensor -> pipeline -> buffer), side by side:');
  for (const line of await agentUnderOpenStorm()) console.log(`  ${line}`);
  console.log(`\ntotal ${fmt(seconds(started))} s`);
}

/** In its own scope so the 400k sample events are garbage by the time the big buffer is queried. */
async function appendAndCompression(): Promise<void> {
  const sample = batches(realisticEvents(1, Date.now() * 1e6, 1e6), 400_000);

  // First, while the heap is small: later phases leave garbage that delays async completions.
  console.log('compression of the same blocks (single thread each):');
  for (const line of await compressionNumbers(rawBlocks(sample), sample.flat().length)) console.log(`  ${line}`);
  console.log('  -> zstd: about half the stored bytes of lz4 at a speed that keeps up with appends\n');

  await appendRate(sample, 1); // warm-up
  const append = await appendRate(sample, 3);
  console.log('append (one core; encoding included, compression and writes on libuv threads):');
  console.log(`  buffer.append            ${mega(append.perSecond)} events/s (target >= 1M)`);
  console.log(`  end to end incl. flush   ${mega(append.wallPerSecond)} events/s (wall clock, all threads)`);
  console.log(`  msgpackr Packr.pack      ${mega(packrRate(sample))} events/s (encoding alone, for comparison)`);
  console.log(`  stored                   ${fmt(append.bytesPerEvent)} bytes/event on disk, frames and headers included (target <= 40)`);
  const spreadSample = sample.map((batch) => batch.map(spreadBuilt));
  console.log(`  spread-built events      ${mega((await appendRate(spreadSample, 1)).perSecond)} events/s (buffer.append of events built as {...common, type, …})\n`);
}

/**
 * The agent end to end, as a node runs it: startAgent (sensor -> pipeline ->
 * buffer sink, every event type, a temporary data dir), while the open storm
 * runs; against the storm alone, rounds interleaved.
 */
async function agentUnderOpenStorm(): Promise<string[]> {
  const opens = Number(process.env.AMBER_BENCH_OPENS ?? 1_000_000);
  const rounds = Number(process.env.AMBER_BENCH_ROUNDS ?? 3);
  const { openStorm } = compileWorkloads();
  const alone: number[] = [];
  const agent: { seconds: number; stored: number; ours: number; drops: number; appendedPerSecond: number }[] = [];
  for (let round = 0; round < rounds; round++) {
    alone.push((await runChild(openStorm, [String(opens)])).seconds);
    const dir = await mkdtemp(path.join(tmpdir(), 'amber-bench-agent-'));
    // the API on a socket of its own: a node's agent may hold /run/amber/amber.sock
    const config = loadConfig({
      overrides: [[['dataDir'], dir], [['buffer', 'maxBytes'], 1024 * MiB], [['api', 'listen'], [`unix://${dir}/amber.sock`]]],
    });
    const running = await startAgent(config, pino({ level: 'warn' }));
    let pid = -1;
    let ours = 0;
    // counted beside the buffer, as one more sink of the agent's pipeline
    running.pipeline.addSink((events) => {
      for (const e of events) if (e.pid === pid && e.type === 'open' && e.comm === 'open-storm' && e.path === '/dev/null') ours++;
    });
    try {
      const run = await runChild(openStorm, [String(opens)], undefined, (p) => (pid = p));
      const stats = await running.sensor.stop();
      await running.buffer.flush();
      const stored = running.buffer.stats().events;
      agent.push({ seconds: run.seconds, stored, ours, drops: countTotal(stats.drops), appendedPerSecond: stored / run.seconds });
    } finally {
      await running.close();
      await rm(dir, { recursive: true, force: true });
    }
  }
  const base = median(alone);
  const mid = agent.find((a) => a.seconds === median(agent.map((x) => x.seconds)))!;
  return [
    `open storm alone          ${fmt(base)} s (${mega(opens / base)} opens/s)`,
    `open storm, agent         ${fmt(mid.seconds)} s: ${(mid.seconds / base).toFixed(3)}x of no tracer (target <= 1.25x), ${mega(mid.appendedPerSecond)} events/s into the buffer`,
    `storm events received     ${agent.map((a) => `${a.ours}/${opens}`).join(', ')} (every round)`,
    `ring drops                ${agent.map((a) => a.drops).join(', ')} (every round; target 0)`,
  ];
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
