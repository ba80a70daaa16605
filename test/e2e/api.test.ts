/**
 * The agent's API as people and tools use it: real agents (real kernel, a
 * real podman container), the CLI as a separate process over the unix socket,
 * a slow client during an open storm, and a fuzzer against the service.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/api/client';
import { filterToProto } from '../../src/api/event-codec';
import { AmberClient, AmberService, QueryRequest, TraceRequest, type TraceResponse } from '../../src/api/gen/amber';
import type { AmberEvent } from '../../src/sensor/events';
import { amber, amberStreaming, type Run, type RunningAgent, startAgentProcess, stopAgentProcess } from '../helpers/agent';
import { startContainer, uniqueName, type Container } from '../helpers/podman';

const execFileP = promisify(execFile);

const lines = (text: string) => text.split('\n').filter(Boolean);

async function until<T>(what: string, f: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the agent API over its unix socket', () => {
  let container: Container;
  let agent: RunningAgent | undefined;
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-api-'));

  beforeAll(async () => {
    container = await startContainer(uniqueName('amber-e2e-api'));
    // room for a whole storm in one client's queue (the slow-client test's complete reader)
    agent = await startAgentProcess(dataDir, { AMBER_API_TRACE_QUEUE: '1000000' }, ['--node-name', 'node-main']);
  });
  afterAll(async () => {
    await stopAgentProcess(agent);
    await container?.remove();
    fs.rmSync(dataDir, { recursive: true, force: true });
    fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
  });

  it('listens on a 0600 socket in a 0700 directory', () => {
    const socket = agent!.server.slice('unix://'.length);
    expect(fs.statSync(socket).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.dirname(socket)).mode & 0o777).toBe(0o700);
  });

  it('amber trace exec --server prints the container exec exactly as --local does', async () => {
    const marker = `amber-api-exec-${Date.now()}`;
    const prefix = container.id.slice(0, 12);
    let local: Promise<Run> | undefined;
    const remote = await amberStreaming(['trace', 'exec', '--server', agent!.server, '--container', prefix, '-o', 'json', '--timeout', '8s'], async () => {
      local = amberStreaming(['trace', 'exec', '--local', '--container', prefix, '-o', 'json', '--timeout', '6s'], async () => {
        await container.exec('/bin/sh', '-c', `echo ${marker} > /dev/null`);
      });
      await local;
    });
    const localRun = await local!;
    expect(remote.code).toBe(0);
    expect(localRun.code).toBe(0);
    const mine = (out: string) => lines(out).filter((l) => l.includes(marker));
    expect(mine(remote.stdout)).toHaveLength(1);
    expect(mine(localRun.stdout)).toHaveLength(1);
    // Two processes, two sensors: each estimates the boot-to-epoch offset of its own ts, so ts may
    // differ by microseconds; every other byte is the same.
    const [r, l] = [JSON.parse(mine(remote.stdout)[0]), JSON.parse(mine(localRun.stdout)[0])];
    expect(Math.abs(r.ts - l.ts)).toBeLessThan(1e6);
    expect(mine(remote.stdout)[0].replace(/"ts":\d+/, '')).toBe(mine(localRun.stdout)[0].replace(/"ts":\d+/, ''));
    // the same agent's buffer, through Query, prints the very same line, ts included
    const stored = await until('the exec in the buffer', async () => {
      const q = await amber('buffer', 'query', '--server', agent!.server, '--type', 'exec', '--container', prefix, '--match', marker, '-o', 'json');
      return lines(q.stdout).length === 1 ? lines(q.stdout) : undefined;
    });
    expect(stored).toEqual(mine(remote.stdout));
    const ev = JSON.parse(mine(remote.stdout)[0]) as AmberEvent;
    expect(ev).toMatchObject({ type: 'exec', containerId: container.id, args: ['/bin/sh', '-c', `echo ${marker} > /dev/null`] });
    // every line is the container's exec: the filter ran on the agent
    for (const l of lines(remote.stdout)) expect(JSON.parse(l)).toMatchObject({ type: 'exec', containerId: container.id });
    expect(remote.stderr).toContain('node-main: ');
    expect(remote.stderr).toContain('dropped for this client: 0');
  });

  it('amber buffer query --server returns what the offline query of the data dir returns', async () => {
    const marker = `amber-api-query-${Date.now()}`;
    await container.exec('/bin/sh', '-c', `echo ${marker} > /tmp/${marker}.txt`);
    const since = String(Date.now() * 1e6 - 120e9);
    const args = ['--container', container.id, '--since', since, '-o', 'json'];
    const result = await until('the marker in both the live and the offline query', async () => {
      const [live, offline] = await Promise.all([amber('buffer', 'query', '--server', agent!.server, ...args), amber('buffer', 'query', '--data-dir', dataDir, ...args)]);
      expect(live.code).toBe(0);
      expect(offline.code).toBe(0);
      // the live query also sees what is not flushed yet: equal once both hold the marker's events
      const ok = live.stdout.includes(`/tmp/${marker}.txt`) && live.stdout === offline.stdout;
      return ok ? live : undefined;
    });
    const events = lines(result.stdout).map((l) => JSON.parse(l) as AmberEvent);
    expect(events.filter((e) => e.type === 'open' && e.path === `/tmp/${marker}.txt`)).toHaveLength(1);
    expect(events.every((e) => e.containerId === container.id)).toBe(true);
  });

  it('amber status shows the node, the sensor and its counters, the subscribers and the buffer', async () => {
    const client = new AgentClient(agent!.server);
    try {
      // an open Trace stream shows up as a subscriber
      const { items } = client.trace({ types: ['exit'], container: container.id.slice(0, 12) });
      const reader = (async () => {
        for await (const _ of items) void _;
      })();
      await until('the trace subscriber', async () => ((await client.status()).subscribers.some((s) => s.name.startsWith('api:trace#')) ? true : undefined));
      const run = await amber('status', '--server', agent!.server, '-o', 'json');
      expect(run.code).toBe(0);
      const s = JSON.parse(run.stdout);
      expect(s).toMatchObject({ node: 'node-main', version: '0.1.0', sensor: { state: 'running' }, activeStreams: 1, buffer: { dataDir } });
      expect(s.sensor.programs).toContain('amber_exec');
      expect(s.types.map((t: { type: string }) => t.type)).toEqual(['exec', 'exit', 'fork', 'open', 'connect', 'accept', 'dns']);
      expect(s.types.find((t: { type: string }) => t.type === 'exec').events).toBeGreaterThan(0);
      // the detector subscribes at start; the stream after it
      expect(s.subscribers).toEqual([
        expect.objectContaining({ name: 'detector', dropped: 0 }),
        expect.objectContaining({ name: expect.stringMatching(/^api:trace#\d+$/), dropped: 0 }),
      ]);
      const text = await amber('status', '--server', agent!.server);
      expect(text.stdout).toMatch(/^node +node-main$/m);
      expect(text.stdout).toMatch(/^exec +\d+ +0$/m);
      client.cancel();
      await reader;
    } finally {
      client.close();
    }
  });

  it('an unreachable agent is one clear line and exit code 1', async () => {
    const run = await amber('status', '--server', `unix://${dataDir}-run/nothing.sock`);
    expect(run.code).toBe(1);
    expect(lines(run.stderr)).toEqual([expect.stringMatching(/nothing\.sock: cannot reach the agent: UNAVAILABLE/)]);
  });

  it('survives malformed, truncated and oversized messages and hostile identifiers, and answers the next valid call', async () => {
    // a client that sends raw bytes as each method's request
    const raw: grpc.ServiceDefinition = {};
    for (const [name, m] of Object.entries(AmberService)) raw[name] = { ...m, requestSerialize: (b: Buffer) => b } as grpc.MethodDefinition<unknown, unknown>;
    const RawClient = grpc.makeGenericClientConstructor(raw, 'amber.v1.Amber');
    const rawClient = new RawClient(`unix://${agent!.server.slice('unix://'.length)}`, grpc.credentials.createInsecure()) as grpc.Client &
      Record<string, (req: Buffer, md: grpc.Metadata, opts: grpc.CallOptions, cb?: (e: grpc.ServiceError | null) => void) => grpc.ClientReadableStream<unknown>>;

    // a seeded generator: the same cases every run
    let seed = 0x5eed1234;
    const rand = () => {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      return (seed >>> 0) / 2 ** 32;
    };
    const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(rand() * 256)));
    const valid = TraceRequest.encode({ filter: filterToProto({ types: ['exec'], comm: 'sh', match: '/tmp' }), maxQueued: 10 }).finish();
    const cases: Buffer[] = [];
    for (let i = 0; i < 100; i++) cases.push(bytes(Math.floor(rand() * 64)));
    for (let i = 0; i < 50; i++) cases.push(Buffer.from(valid.subarray(0, Math.floor(rand() * valid.length))));
    for (let i = 0; i < 50; i++) {
      const b = Buffer.from(valid);
      b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
      cases.push(b);
    }
    const hostile = ['../../etc/passwd', '/etc/shadow', 'a'.repeat(65), 'ABCDEF', '\x00', '%2e%2e/', ''];
    for (const container of hostile) {
      cases.push(Buffer.from(TraceRequest.encode({ filter: { ...filterToProto({}), container }, maxQueued: 0 }).finish()));
      cases.push(Buffer.from(QueryRequest.encode({ filter: { ...filterToProto({}), container }, limit: 1 }).finish()));
    }
    cases.push(Buffer.from(TraceRequest.encode({ filter: { ...filterToProto({}), types: ['exec', '../x'] }, maxQueued: 0 }).finish()));
    cases.push(Buffer.from(TraceRequest.encode({ filter: { ...filterToProto({}), comm: 'x'.repeat(100) }, maxQueued: 0 }).finish()));
    cases.push(Buffer.from(TraceRequest.encode({ filter: { ...filterToProto({}), since: Number.NaN }, maxQueued: 0 }).finish()));
    const oversized = bytes(1 << 20);

    const outcome = (method: string, payload: Buffer): Promise<grpc.status> =>
      new Promise((resolve) => {
        const md = new grpc.Metadata();
        // a valid Trace runs until its deadline
        const opts = { deadline: Date.now() + 250 };
        if (method === 'status') {
          rawClient.status(payload, md, opts, (e) => resolve(e ? e.code : grpc.status.OK));
          return;
        }
        const call = rawClient[method](payload, md, opts);
        call.on('data', () => {});
        call.on('error', (e: grpc.ServiceError) => resolve(e.code));
        call.on('status', (s: grpc.StatusObject) => resolve(s.code));
      });

    const seen = new Map<string, number>();
    const started = Date.now();
    for (const [i, payload] of [...cases, oversized].entries()) {
      const method = ['trace', 'query', 'status'][i % 3];
      const code = await outcome(method, payload);
      const key = grpc.status[code];
      seen.set(key, (seen.get(key) ?? 0) + 1);
      // never INTERNAL or UNAVAILABLE (a crash): the request's fault, or a valid request that ran until its deadline
      expect(['OK', 'INVALID_ARGUMENT', 'RESOURCE_EXHAUSTED', 'DEADLINE_EXCEEDED'], `case ${i} (${method}) got ${key}`).toContain(key);
    }
    expect(await outcome('trace', oversized)).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(seen.get('INVALID_ARGUMENT')).toBeGreaterThan(50);
    expect(Date.now() - started).toBeLessThan(60_000);
    for (const container of hostile) {
      expect(await outcome('query', Buffer.from(QueryRequest.encode({ filter: { ...filterToProto({}), container }, limit: 1 }).finish()))).toBe(
        grpc.status.INVALID_ARGUMENT,
      );
    }
    rawClient.close();

    // still up, and answering
    expect(agent!.child.exitCode).toBeNull();
    const run = await amber('status', '--server', agent!.server, '-o', 'json');
    expect(JSON.parse(run.stdout)).toMatchObject({ node: 'node-main', sensor: { state: 'running' } });
  });

  it('caps the open streams of one client: the next one gets RESOURCE_EXHAUSTED', async () => {
    const client = new AmberClient(`unix://${agent!.server.slice('unix://'.length)}`, grpc.credentials.createInsecure());
    const calls = Array.from({ length: 16 }, () => client.trace({ filter: filterToProto({ types: ['exec'], comm: 'never-such-comm' }), maxQueued: 0 }));
    for (const c of calls) c.on('error', () => {});
    await until('16 open streams', async () => {
      const s = await new AgentClient(agent!.server).status();
      return s.activeStreams === 16 ? true : undefined;
    });
    const refused = await new Promise<grpc.ServiceError>((resolve) => {
      const c = client.trace({ filter: filterToProto({}), maxQueued: 0 });
      c.on('data', () => {});
      c.on('error', resolve);
    });
    expect(refused.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(refused.details).toContain('api.maxStreamsPerClient is 16');
    for (const c of calls) c.cancel();
    client.close();
    await until('the streams released', async () => ((await new AgentClient(agent!.server).status()).activeStreams === 0 ? true : undefined));
  });

  it('a slow Trace client during an open storm: told what it missed; the buffer and another client lose nothing', async () => {
    const COUNT = 200_000;
    // a storm binary of a unique name: another run's storm on this machine is not ours
    const comm = `ast${process.pid % 100000}${Math.floor(Math.random() * 1000)}`.slice(0, 15);
    const storm = path.join(dataDir, comm);
    await execFileP('cc', ['-O2', '-o', storm, path.resolve(__dirname, '../../bench/workloads/open-storm.c')]);
    const filter = { types: ['open' as const], comm, match: '/dev/null' };
    const client = new AmberClient(`unix://${agent!.server.slice('unix://'.length)}`, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 64 << 20,
    });

    // the slow one: reads nothing for 10 s
    const slow = client.trace({ filter: filterToProto(filter), maxQueued: 10_000 });
    slow.pause();
    let slowEvents = 0;
    let slowDropped = 0;
    slow.on('data', (m: TraceResponse) => {
      slowEvents += m.events.length;
      slowDropped += m.dropped;
    });
    slow.on('error', () => {});
    slow.pause();
    // the other one reads everything, with room to queue all of it: on a loaded 2-core machine it may
    // fall seconds behind the storm, and this test is about the slow one costing it nothing
    const fast = new AgentClient(agent!.server);
    const fastStream = fast.trace(filter, 1_000_000);
    let fastEvents = 0;
    let fastDropped = 0;
    const fastDone = (async () => {
      for await (const item of fastStream.items) {
        if ('dropped' in item) fastDropped += item.dropped;
        else fastEvents += item.events.length;
      }
    })();
    await until('both streams open', async () => ((await fast.status()).activeStreams === 2 ? true : undefined));

    const t0 = Date.now();
    await execFileP(storm, [String(COUNT)]);
    await until('the fast client has every storm event', async () => (fastEvents >= COUNT ? true : undefined), 60_000);
    await sleep(Math.max(0, 10_000 - (Date.now() - t0)));
    slow.resume();
    await until('the slow client has caught up', async () => (slowEvents + slowDropped >= COUNT ? true : undefined), 60_000);

    expect(fastEvents).toBe(COUNT);
    expect(fastDropped).toBe(0);
    expect(slowDropped).toBeGreaterThan(0);
    expect(slowEvents + slowDropped).toBe(COUNT);
    const status = await fast.status();
    const sub = status.subscribers.filter((s) => s.name.startsWith('api:trace#'));
    expect(sub.map((s) => s.dropped).sort((a, b) => a - b)).toEqual([0, slowDropped]);

    slow.cancel();
    fast.cancel();
    client.close();
    await fastDone;

    // the buffer holds every one
    const counted = await until('the buffer to hold the storm', async () => {
      let n = 0;
      const q = new AgentClient(agent!.server);
      for await (const batch of q.query(filter)) n += batch.length;
      q.close();
      return n === COUNT ? n : undefined;
    }, 30_000);
    expect(counted).toBe(COUNT);
    expect(status.types.find((t) => t.type === 'open')!.drops).toBe(0);
    fast.close();
  });

  it('answers the standard health check, and ends each Trace stream with its drop total when it stops', async () => {
    const Health = grpc.makeGenericClientConstructor(healthService, 'grpc.health.v1.Health');
    const health = new Health(`unix://${agent!.server.slice('unix://'.length)}`, grpc.credentials.createInsecure()) as grpc.Client & {
      check(req: { service: string }, cb: (e: grpc.ServiceError | null, r: { status: string | number }) => void): void;
    };
    for (const name of ['', 'amber.v1.Amber']) {
      const r = await new Promise<{ status: string | number }>((resolve, reject) => health.check({ service: name }, (e, res) => (e ? reject(e) : resolve(res))));
      expect([1, 'SERVING']).toContain(r.status);
    }
    health.close();

    const client = new AgentClient(agent!.server);
    const { items, dropped } = client.trace({ types: ['exec'] });
    let ended = false;
    const reader = (async () => {
      for await (const _ of items) void _;
      ended = true;
    })();
    await until('the stream open', async () => ((await client.status()).activeStreams === 1 ? true : undefined));
    const cli = amberStreaming(['trace', 'exec', '--server', agent!.server], async () => {
      await until('the CLI stream open', async () => ((await client.status()).activeStreams === 2 ? true : undefined));
      agent!.child.kill('SIGTERM');
    });
    expect(await agent!.exited).toBe(0);
    await reader;
    expect(ended).toBe(true);
    expect(await dropped).toBe(0);
    const run = await cli;
    expect(run.code).toBe(0);
    expect(run.stderr).toContain('amber: node-main: the agent ended the stream (it is stopping)');
    client.close();
  });
});

describe('amber trace across two agents', () => {
  let container: Container;
  let containerName: string;
  const dirs = [fs.mkdtempSync(path.join(os.tmpdir(), 'amber-api-a-')), fs.mkdtempSync(path.join(os.tmpdir(), 'amber-api-b-'))];
  const agents: RunningAgent[] = [];

  beforeAll(async () => {
    containerName = uniqueName('amber-e2e-fanout');
    container = await startContainer(containerName);
    agents.push(await startAgentProcess(dirs[0], {}, ['--node-name', 'node-a']));
    agents.push(await startAgentProcess(dirs[1], {}, ['--node-name', 'node-b']));
  });
  afterAll(async () => {
    for (const a of agents) await stopAgentProcess(a);
    await container?.remove();
    for (const d of dirs) {
      fs.rmSync(d, { recursive: true, force: true });
      fs.rmSync(`${d}-run`, { recursive: true, force: true });
    }
  });

  it('merges both with the right NODE; one stopped mid-stream is reported once and the other goes on', async () => {
    const first = `amber-fan-one-${Date.now()}`;
    const second = `amber-fan-two-${Date.now()}`;
    const prefix = container.id.slice(0, 12);
    const run = await amberStreaming(
      ['trace', 'exec', '--server', agents[0].server, '--server', agents[1].server, '--container', prefix, '--timeout', '30s'],
      async (child, out) => {
        await container.exec('/bin/sh', '-c', `echo ${first} > /dev/null`);
        await until('the first exec from both nodes', async () => (lines(out()).filter((l) => l.includes(first)).length === 2 ? true : undefined));
        await stopAgentProcess(agents[1], 'SIGKILL');
        await container.exec('/bin/sh', '-c', `echo ${second} > /dev/null`);
        await until('the second exec from node-a', async () => (lines(out()).some((l) => l.includes(second)) ? true : undefined));
        await sleep(500);
        child.kill('SIGINT');
      },
    );
    expect(run.code).toBe(0);
    const out = lines(run.stdout);
    expect(out[0]).toBe('NODE    NAMESPACE     POD                   CONTAINER             PID  COMM              TYPE     DETAILS');
    const firsts = out.filter((l) => l.includes(first));
    expect(firsts.map((l) => l.slice(0, 6)).sort()).toEqual(['node-a', 'node-b']);
    // each agent names the container (learned when it started): no namespace or pod under podman
    for (const l of firsts) expect(l).toMatch(new RegExp(`^node-[ab] {38}${containerName} +\\d+  sh +exec     `));
    expect(out.filter((l) => l.includes(second)).map((l) => l.slice(0, 6))).toEqual(['node-a']);
    const lost = lines(run.stderr).filter((l) => l.includes('node-b') && !l.includes('amber: tracing') && !l.includes('events; dropped for this client'));
    expect(lost).toEqual([expect.stringMatching(/^amber: node-b: lost the agent \(unix:.*\): UNAVAILABLE/)]);
    expect(run.stderr).toMatch(/amber: node-a: \d+ events; dropped for this client: 0/);
  });

  it('-o json across agents puts the node first on every line', async () => {
    const marker = `amber-fan-json-${Date.now()}`;
    const run = await amberStreaming(['trace', 'exec', '--server', agents[0].server, '--server', agents[0].server, '-o', 'json', '--container', container.id, '--timeout', '4s'], async () => {
      await container.exec('/bin/sh', '-c', `echo ${marker} > /dev/null`);
    });
    const mine = lines(run.stdout).filter((l) => l.includes(marker)).map((l) => JSON.parse(l));
    expect(mine).toHaveLength(2);
    for (const e of mine) expect(Object.keys(e).slice(0, 2)).toEqual(['node', 'type']);
    expect(mine[0]).toMatchObject({ node: 'node-a', type: 'exec', containerId: container.id });
  });
});
