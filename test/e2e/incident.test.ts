/**
 * Incidents in a real agent (in this process) on real podman containers: the
 * attack chain (a binary dropped into /tmp, made executable and run) opens an
 * incident through drift whose bundle holds the executable, the upper layer,
 * the window with the write before the exec, a core; a manual trigger on a
 * process holding a marker yields a core gdb reads it from; the bundle
 * verifies (Amber and openssl); a trigger flood costs bounded work. Needs root.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type Agent } from '../../src/agent';
import { loadConfig } from '../../src/config';
import { grepCore } from '../../src/incident/core-grep';
import type { IncidentSummary } from '../../src/incident/incidents';
import { INCIDENTS_DIR, type Manifest } from '../../src/incident/manifest';
import { readTar } from '../../src/incident/tar';
import { verifyBundle } from '../../src/incident/verify';
import { buildHolder, freezeOf, gdb, startHolder, v2Dir } from '../helpers/memory-holder';
import { podman, startContainer, uniqueName, type Container } from '../helpers/podman';

const BUSYBOX = fs.readFileSync('/bin/busybox');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('incidents (agent, podman)', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-incident-'));
  const dataDir = path.join(tmp, 'data');
  const binDir = path.join(tmp, 'bin');
  const containers: string[] = [];
  const logLines: Record<string, unknown>[] = [];
  let agent: Agent | undefined;
  let container: Container;

  beforeAll(async () => {
    fs.mkdirSync(binDir, { mode: 0o755 });
    buildHolder(binDir);
    container = await startContainer(uniqueName('amber-incident'));
    containers.push(container.id);
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) logLines.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    });
    const config = loadConfig({
      overrides: [
        [['dataDir'], dataDir],
        [['api', 'listen'], [`unix://${dataDir}-run/amber.sock`]],
        [['incident', 'window'], { before: '1m', after: '1s' }],
        [['incident', 'maxConcurrent'], 2],
        [['incident', 'maxQueued'], 4],
      ],
    });
    agent = await startAgent(config, pino({ level: 'info' }, sink));
  }, 120_000);

  afterAll(async () => {
    await agent?.close();
    for (const id of containers) await podman('rm', '-f', '-t', '0', id).catch((e) => console.error(e));
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
  }, 120_000);

  async function complete(match: (s: IncidentSummary) => boolean, what: string): Promise<IncidentSummary> {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const found = (await agent!.incidents!.list()).filter(match);
      if (found.length > 1) throw new Error(`${found.length} incidents for ${what}`);
      if (found[0]?.state === 'complete') return found[0]; // signed, verified and packed
      if (found[0]?.state === 'failed') throw new Error(`incident for ${what} failed: ${found[0].error}`);
      if (Date.now() > deadline) throw new Error(`no complete incident for ${what}: ${JSON.stringify(found)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  const bundleDir = (id: string) => path.join(dataDir, INCIDENTS_DIR, id);
  const manifestOf = (id: string) => JSON.parse(fs.readFileSync(path.join(bundleDir(id), 'manifest.json'), 'utf8')) as Manifest;
  const frozenState = (pid: number) => freezeOf(v2Dir(pid));

  it('drift opens an incident: the executable, the upper layer, the write before the exec, a core; it verifies', async () => {
    // the attack chain: drop a binary into /tmp, make it executable, run it (busybox runs the applet its file is named after)
    await container.exec('/bin/sh', '-c', 'mkdir /tmp/kit && cp /bin/busybox /tmp/kit/sleep && chmod +x /tmp/kit/sleep');
    await podman('exec', '-d', container.id, '/tmp/kit/sleep', '300');
    const s = await complete((x) => x.containerId === container.id && x.trigger.kind === 'drift', 'the drift');
    expect(s).toMatchObject({ state: 'complete', trigger: { kind: 'drift', rule: 'drift', reason: 'an executable created on the upper layer: /tmp/kit/sleep' }, joined: 0, error: '' });
    const m = manifestOf(s.id);
    const pid = (m.trigger.event as { pid: number }).pid;
    expect(m).toMatchObject({ version: 1, id: s.id, node: os.hostname(), container: { id: container.id }, tool: { name: 'amber' }, window: { beforeMs: 60_000, afterMs: 1000, complete: true } });
    const byPath = new Map(m.artifacts.map((a) => [a.path, a]));
    expect([...byPath.keys()].sort()).toEqual(
      [
        'capture.log.jsonl', 'container.json', 'events.jsonl', 'events.msgpack', 'exposure.json', `executable/${pid}.exe`,
        `memory/${pid}.core`, `memory/${pid}.maps.json`, `process/${pid}.json`, 'upper-layer.tar',
      ].sort(),
    );
    // the executable that ran: busybox's bytes
    expect(byPath.get(`executable/${pid}.exe`)).toMatchObject({ kind: 'executable', pid, size: BUSYBOX.length, sha256: sha256(BUSYBOX) });
    // the upper layer holds tmp/kit/sleep, busybox's bytes
    const entries = new Map<string, Buffer>();
    for await (const e of readTar(fs.createReadStream(path.join(bundleDir(s.id), 'upper-layer.tar')))) {
      entries.set(e.name.toString('utf8'), e.type === 'file' ? await e.buffer() : Buffer.alloc(0));
    }
    expect(sha256(entries.get('tmp/kit/sleep')!)).toBe(sha256(BUSYBOX));
    // the window: cp's write of the file, then the exec, in order
    const events = fs.readFileSync(path.join(bundleDir(s.id), 'events.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const write = events.find((e) => e.type === 'open' && e.path === '/tmp/kit/sleep' && e.comm === 'cp' && e.flagNames.includes('O_CREAT'));
    const exec = events.find((e) => e.type === 'exec' && e.filename === '/tmp/kit/sleep' && e.pid === pid);
    expect(write).toBeDefined();
    expect(exec).toBeDefined();
    expect(write.ts).toBeLessThan(exec.ts);
    expect(events.every((e) => e.containerId === container.id)).toBe(true);
    // verified by Amber and by openssl with the published key, and the container is not left frozen
    const check = await verifyBundle(bundleDir(s.id), agent!.incidents!.publicKey());
    expect(check).toMatchObject({ ok: true, signature: 'valid', problems: [] });
    expect((await verifyBundle(path.join(dataDir, INCIDENTS_DIR, `${s.id}.tar.gz`), agent!.incidents!.publicKey())).ok).toBe(true);
    const pub = path.join(dataDir, 'keys', 'signing-key.pub.pem');
    const openssl = execFileSync('openssl', ['pkeyutl', '-verify', '-pubin', '-inkey', pub, '-rawin', '-in', path.join(bundleDir(s.id), 'manifest.json'), '-sigfile', path.join(bundleDir(s.id), 'manifest.sig')], { encoding: 'utf8' });
    expect(openssl.trim()).toBe('Signature Verified Successfully');
    expect(frozenState(container.pid)).toBe('0');
    // container.json: the metadata and the process tree: the init, and the dropped binary (podman exec'd: its parent is outside)
    const facts = JSON.parse(fs.readFileSync(path.join(bundleDir(s.id), 'container.json'), 'utf8'));
    expect(facts.metadata).toMatchObject({ containerId: container.id, runtime: 'podman', initPid: container.pid });
    expect(facts.tree.map((n: { pid: number; exePath: string; children: unknown[] }) => [n.pid, n.exePath, n.children.length])).toEqual([
      [container.pid, '/bin/busybox', 0],
      [pid, '/tmp/kit/sleep', 0],
    ]);
    // a second drift in the same container within the join window joins the incident
    await podman('exec', '-d', container.id, '/tmp/kit/sleep', '301');
    const deadline = Date.now() + 20_000;
    while ((await agent!.incidents!.show(s.id))!.summary.joined < 1) {
      if (Date.now() > deadline) throw new Error('the second drift did not join the incident');
      await new Promise((r) => setTimeout(r, 100));
    }
  }, 120_000);

  it('a trigger by hand on a process holding a marker: its core has the marker where gdb reads it', async () => {
    const h = await startHolder(binDir, 16, 1, containers, 'amber-incident-holder');
    const { id, joined } = await agent!.incidents!.trigger({ container: h.id.slice(0, 12), reason: 'suspicious', requestedBy: 'test' });
    expect(joined).toBe(false);
    const s = await complete((x) => x.id === id, 'the manual trigger');
    expect(s).toMatchObject({ trigger: { kind: 'manual', reason: 'suspicious' }, containerId: h.id });
    const core = path.join(bundleDir(id), 'memory', `${h.pid}.core`);
    const hits = [];
    for await (const hit of grepCore(core, h.marker)) hits.push(hit);
    expect(hits.map((x) => [x.pid, x.comm])).toEqual([[h.pid, 'memory-holder']]);
    expect(gdb(core, `x/s ${hits[0].address}`)).toContain(`"${h.marker}"`);
    expect(frozenState(h.pid)).toBe('0');
  }, 120_000);

  it('on a nearly full disk the cores take only what is free beyond the reserve: the filler is skipped, named, logged', async () => {
    // a data dir of its own on a 1200 MiB tmpfs, with a second agent on it
    const small = path.join(tmp, 'small');
    fs.mkdirSync(small, { mode: 0o700 });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1200m,mode=0700', 'tmpfs', small]);
    let second: Agent | undefined;
    try {
      const h = await startHolder(binDir, 256, 0, containers, 'amber-incident-full');
      second = await startAgent(
        loadConfig({
          overrides: [
            [['dataDir'], path.join(small, 'data')],
            [['api', 'listen'], [`unix://${small}/amber.sock`]],
            [['buffer', 'maxBytes'], '16MiB'],
            [['incident', 'window'], { before: '1m', after: 0 }],
          ],
        }),
        pino({ level: 'warn' }, new Writable({ write: (_c, _e, done) => done() })),
      );
      await new Promise((r) => setTimeout(r, 1000)); // the agent learns the running container
      const { id } = await second.incidents!.trigger({ container: h.id, reason: 'disk nearly full' });
      const deadline = Date.now() + 60_000;
      while ((await second.incidents!.show(id))?.summary.state !== 'complete') {
        if (Date.now() > deadline) throw new Error('the incident on the small disk did not complete');
        await new Promise((r) => setTimeout(r, 200));
      }
      const dir = path.join(small, 'data', INCIDENTS_DIR, id);
      const log = fs.readFileSync(path.join(dir, 'capture.log.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
      const lowered = log.find((r) => r.msg === 'bound lowered: the disk is nearly full');
      expect(lowered).toMatchObject({ step: 'memory', reserveBytes: 1024 ** 3 });
      expect(lowered.freeBytes).toBeLessThan(1200 * 2 ** 20);
      expect(lowered.maxBytes).toBe(lowered.freeBytes - 1024 ** 3);
      const maps = JSON.parse(fs.readFileSync(path.join(dir, 'memory', `${h.pid}.maps.json`), 'utf8'));
      const filler = maps.regions.find((r: { start: string }) => BigInt(r.start) === h.filler);
      expect(filler).toMatchObject({ dumped: 0 });
      expect(filler.skipped).toMatch(/^over the byte bound: needs 268435456 bytes, /);
      expect(maps.dumpedBytes).toBeLessThanOrEqual(lowered.maxBytes);
    } finally {
      await second?.close();
      execFileSync('umount', [small]);
    }
  }, 120_000);

  it('a flood of 100 triggers on 10 containers: bounded work, the caps counted and logged, the agent stays up', async () => {
    const flood: string[] = [];
    for (let i = 0; i < 10; i++) {
      const c = await startContainer(uniqueName('amber-flood'));
      containers.push(c.id);
      flood.push(c.id);
    }
    await new Promise((r) => setTimeout(r, 1500)); // the agent learns the new containers
    const before = agent!.incidents!.stats();
    const outcomes: string[] = [];
    for (let round = 0; round < 10; round++) {
      for (const id of flood) {
        const r = await agent!.incidents!.trigger({ container: id, reason: 'flood' }).then(
          (x) => (x.joined ? 'joined' : 'opened'),
          (e: Error) => (e.message.includes('maxQueued') ? 'refused' : e.message),
        );
        outcomes.push(r);
      }
    }
    const count = (what: string) => outcomes.filter((o) => o === what).length;
    // 2 capture at once and 4 wait: 6 containers get an incident, their other 9 triggers join it; the other 4 are refused
    expect({ opened: count('opened'), joined: count('joined'), refused: count('refused') }).toEqual({ opened: 6, joined: 54, refused: 40 });
    const after = agent!.incidents!.stats();
    expect(after.refusedQueueFull - before.refusedQueueFull).toBe(40);
    expect(logLines.filter((l) => l.event === 'incident-refused').length).toBeGreaterThanOrEqual(40);
    // the six finish, the agent is still recording
    for (const id of flood.slice(0, 6)) await complete((x) => x.containerId === id && x.trigger.reason === 'flood', `flood ${id.slice(0, 12)}`);
    const marker = `after-the-flood-${Date.now()}`;
    await podman('exec', flood[9], '/bin/sh', '-c', `true ${marker}`);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const found = [];
      for await (const ev of agent!.buffer.query({ types: ['exec'], container: flood[9], match: marker })) found.push(ev);
      if (found.length === 1) break;
      if (Date.now() > deadline) throw new Error('the agent did not record an exec after the flood');
      await new Promise((r) => setTimeout(r, 200));
    }
  }, 240_000);
});
