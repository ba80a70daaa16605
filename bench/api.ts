/**
 * API benchmark: events per second one Trace client receives over the unix
 * socket during an open storm, and the storm's slowdown with 0, 1 and 4 idle
 * clients attached (filters that match nothing), side by side in one run.
 * The agent is the built CLI in its own process, as a node runs it.
 * Run: npm run bench:api
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentClient } from '../src/api/client';
import { fromProto, toProto } from '../src/api/event-codec';
import { TraceResponse } from '../src/api/gen/amber';
import { EVENTS_PER_MESSAGE } from '../src/api/server';
import type { OpenEvent } from '../src/sensor/events';
import { compileWorkloads, median, ROOT, runChild } from './workloads';

const CLI = path.join(ROOT, 'dist/src/cli/main.js');
const STORM_OPENS = 1_000_000;
const RUNS = 3;

async function startAgent(dir: string): Promise<{ server: string; stop: () => Promise<void> }> {
  const server = `unix://${dir}/run/amber.sock`;
  const child = spawn(process.execPath, [CLI, 'agent', '--data-dir', path.join(dir, 'data'), '--listen', server, '--node-name', 'bench'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let logs = '';
  child.stdout.on('data', (d: Buffer) => (logs += d.toString()));
  child.stderr.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const deadline = Date.now() + 60_000;
  while (!logs.includes('"event":"started"')) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the agent did not start:\n${logs}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    server,
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Idle clients: Trace streams whose filter matches nothing. */
function idleClients(server: string, n: number): AgentClient[] {
  const clients = Array.from({ length: n }, () => new AgentClient(server));
  for (const c of clients) {
    const { items } = c.trace({ comm: 'no-such-comm' });
    void (async () => {
      for await (const _ of items) void _;
    })().catch(() => {});
  }
  return clients;
}

/** Encode + decode of Trace messages of storm-like open events in this process: the ceiling of one client's rate here. */
function codecRate(): { encode: number; decode: number; bytesPerEvent: number } {
  const ev: OpenEvent = {
    type: 'open', ts: Date.now() * 1e6, pid: 4242, tid: 4242, ppid: 1, uid: 0, gid: 0, comm: 'amber-bstorm', cgroupId: 1, containerId: '',
    mntns: 4026531832, netns: 4026531833, path: '/dev/null', flags: 0, flagNames: ['O_RDONLY'], mode: 0, ret: 3, pathTruncated: false,
  };
  const events = Array.from({ length: EVENTS_PER_MESSAGE }, (_, i) => ({ ...ev, ts: ev.ts + i }));
  const rounds = 2000;
  let t = process.hrtime.bigint();
  let bytes = 0;
  let last = new Uint8Array();
  for (let i = 0; i < rounds; i++) {
    last = TraceResponse.encode({ events: events.map((e) => toProto(e)), dropped: 0 }).finish();
    bytes += last.length;
  }
  const encode = (rounds * events.length) / (Number(process.hrtime.bigint() - t) / 1e9);
  t = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) TraceResponse.decode(last).events.map(fromProto);
  const decode = (rounds * events.length) / (Number(process.hrtime.bigint() - t) / 1e9);
  return { encode, decode, bytesPerEvent: bytes / rounds / events.length };
}

async function main(): Promise<void> {
  const codec = codecRate();
  const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
  console.log(
    `codec alone (one core, this process): encode ${fmt(codec.encode)} events/s, decode ${fmt(codec.decode)} events/s, ` +
      `${codec.bytesPerEvent.toFixed(0)} bytes/event on the wire`,
  );
  const { openStorm } = compileWorkloads();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-bench-api-'));
  // a name of its own: the receiving client's filter takes exactly the storm's events
  const comm = 'amber-bstorm';
  const storm = path.join(dir, comm);
  fs.copyFileSync(openStorm, storm);
  const agent = await startAgent(dir);
  console.log(`amber API benchmark: open storm of ${STORM_OPENS} opens, ${RUNS} runs each, agent in its own process, clients over ${agent.server}`);
  console.log(`cores: ${os.cpus().length}, load average at start: ${os.loadavg()[0].toFixed(2)}\n`);
  try {
    // 1. one Trace client receiving the storm
    const rates: number[] = [];
    let missed = 0;
    for (let i = 0; i < RUNS; i++) {
      const client = new AgentClient(agent.server);
      const { items } = client.trace({ types: ['open'], comm, match: '/dev/null' });
      let received = 0;
      let dropped = 0;
      let firstAt = 0n;
      let lastAt = 0n;
      const reader = (async () => {
        for await (const item of items) {
          if ('dropped' in item) dropped += item.dropped;
          else {
            if (received === 0) firstAt = process.hrtime.bigint();
            received += item.events.length;
            lastAt = process.hrtime.bigint();
          }
          if (received + dropped >= STORM_OPENS) break;
        }
      })();
      await new Promise((r) => setTimeout(r, 300));
      const run = await runChild(storm, [String(STORM_OPENS)]);
      // what never comes was lost before the pipeline (kernel drops, in amber status): do not wait for it forever
      await Promise.race([reader, new Promise((r) => setTimeout(r, 10_000))]);
      client.close();
      const seconds = Number(lastAt - firstAt) / 1e9;
      rates.push(received / seconds);
      missed += dropped;
      console.log(
        `  run ${i + 1}: received ${received} of ${STORM_OPENS} (dropped for it: ${dropped}) in ${seconds.toFixed(2)} s; ` +
          `the storm itself ran ${run.seconds.toFixed(2)} s (${Math.round(STORM_OPENS / run.seconds).toLocaleString('en-US')} opens/s)`,
      );
    }
    console.log(`one Trace client receives: ${Math.round(median(rates)).toLocaleString('en-US')} events/s (median; target >= 200,000)${missed ? `; it missed ${missed}` : ''}`);
    console.log('(it cannot receive faster than the storm produces: compare with the storm\'s own rate above)\n');

    // 2. the storm with 0, 1 and 4 idle clients, interleaved so that drift in the machine's load hits all alike
    const times: Record<number, number[]> = { 0: [], 1: [], 4: [] };
    for (let i = 0; i < RUNS; i++) {
      for (const n of [0, 1, 4]) {
        const clients = idleClients(agent.server, n);
        await new Promise((r) => setTimeout(r, 300));
        const { seconds } = await runChild(storm, [String(STORM_OPENS)]);
        times[n].push(seconds);
        for (const c of clients) c.close();
      }
    }
    const base = median(times[0]);
    console.log('idle clients   storm (median s)   vs none');
    for (const n of [0, 1, 4]) {
      const m = median(times[n]);
      console.log(`${String(n).padStart(12)}   ${m.toFixed(3).padStart(16)}   ${n === 0 ? '     -' : `${((m / base - 1) * 100).toFixed(1).padStart(5)}%`}`);
    }
    console.log('(target: 4 idle clients cost the storm < 3% more than none)');
  } finally {
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
