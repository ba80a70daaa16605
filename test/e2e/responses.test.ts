/**
 * Incident responses on the real kernel with real podman containers: the
 * network cut (real BPF links, pinned on a bpffs the test mounts itself and
 * unmounts) and the kill. The containers have their own network namespace
 * (--network none: loopback only); the other TCP end runs in that namespace
 * through nsenter, outside the container's cgroup. Needs root; fails (never
 * skips) when BPF cannot load.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ResponseError, Responses, type CutResult, type ReleaseResult } from '../../src/incident/responses';
import { findCgroup2Root, mountsOfType } from '../../src/sensor/preflight';
import { programIdsHeldBy, programsLoaded, waitForProgramsGone } from '../helpers/bpf';
import { ensureTestImage, podman, uniqueName } from '../helpers/podman';

const execFileP = promisify(execFile);
const PEER = path.resolve(__dirname, '../helpers/tcp-peer.cjs');
const RESPONSES_JS = path.resolve(__dirname, '../../dist/src/incident/responses.js');
const CGROUP_ROOT = findCgroup2Root(undefined, false);
const OUT_PORT = 7001; // the peer listens, the container connects out
const IN_PORT = 7002; // the container listens, the peer connects in

interface TestContainer {
  id: string;
  pid: number;
  cgroupPath: string;
}

/** An empty cgroup of the test's own, removed by its path when done. */
function makeScratchCgroup(): { path: string; dir: string; remove(): void } {
  const name = `/amber-test-responses-${process.pid}`;
  const dir = `${CGROUP_ROOT}${name}`;
  fs.mkdirSync(dir);
  return {
    path: name,
    dir,
    remove: () => {
      for (const sub of fs.readdirSync(dir, { withFileTypes: true })) if (sub.isDirectory()) fs.rmdirSync(path.join(dir, sub.name));
      fs.rmdirSync(dir);
    },
  };
}
const scratch = makeScratchCgroup();
afterAll(() => scratch.remove());

/** A container with a network namespace of its own (loopback only). */
async function startIsolated(name: string, ...cmd: string[]): Promise<TestContainer> {
  const image = await ensureTestImage();
  const id = await podman('run', '-d', '--network', 'none', '--name', name, image, ...(cmd.length ? cmd : ['sleep', '3600']));
  const pid = Number(await podman('inspect', '-f', '{{.State.Pid}}', id));
  const line = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'));
  if (!line) throw new Error(`container ${id} has no cgroup v2 path`);
  return { id, pid, cgroupPath: line.slice(3) };
}

/** Runs one call of the built module in a child node process that exits when done; its JSON result. */
async function inChild<T>(call: string, options: object, ...args: unknown[]): Promise<T> {
  const script = `const { Responses } = require(${JSON.stringify(RESPONSES_JS)});
const [options, args] = JSON.parse(process.argv[1]);
new Responses(options).${call}(...args).then((r) => process.stdout.write(JSON.stringify(r)));`;
  const { stdout } = await execFileP(process.execPath, ['-e', script, JSON.stringify([options, args])]);
  return JSON.parse(stdout) as T;
}

/** The container connects out to the peer: what busybox nc printed, and its exit status. */
function connectOut(c: TestContainer): Promise<string> {
  return podman('exec', c.id, 'sh', '-c', `echo ping | busybox nc -w 2 127.0.0.1 ${OUT_PORT} 2>&1; echo rc=$?`);
}

/** The peer connects in to the container's listener: what it read, or "timeout". */
async function connectIn(c: TestContainer): Promise<string> {
  const { stdout } = await execFileP('nsenter', [`--net=/proc/${c.pid}/ns/net`, process.execPath, PEER, 'connect', String(IN_PORT), '2000']);
  return stdout.trim();
}

describe('network cut', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-responses-'));
  const bpffs = path.join(tmp, 'bpffs');
  const options = { dataDir: path.join(tmp, 'data'), bpffs };
  const responses = new Responses(options);
  const incidentId = 'inc-cut-1';
  const progIds: number[] = [];
  let container: TestContainer | undefined;
  let peer: ChildProcess | undefined;
  let peerOutput = '';
  const connections = () => peerOutput.split('\n').filter((l) => l === 'connection').length;

  beforeAll(async () => {
    container = await startIsolated(uniqueName('amber-cut'));
    // the container's listener: persistent (-ll), answers each peer with "hello"
    await podman('exec', '-d', container.id, 'busybox', 'nc', '-ll', '-p', String(IN_PORT), '-e', 'echo', 'hello');
    peer = spawn('nsenter', [`--net=/proc/${container.pid}/ns/net`, process.execPath, PEER, 'listen', String(OUT_PORT)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((resolve, reject) => {
      peer!.once('exit', (code) => reject(new Error(`the TCP peer exited (${code})`)));
      peer!.stdout!.on('data', (d: Buffer) => {
        peerOutput += d.toString();
        if (peerOutput.includes('ready\n')) resolve();
      });
    });
  });

  afterAll(async () => {
    // whatever failed: no cut left, no container, no mount
    const failures: unknown[] = [];
    try {
      for (const cut of await responses.listCuts()) await responses.releaseNetwork(cut.incidentId);
    } catch (err) {
      failures.push(err);
    }
    if (peer && peer.exitCode === null) {
      await new Promise((resolve) => {
        peer!.once('exit', resolve);
        peer!.kill('SIGTERM');
      });
    }
    if (container) await podman('rm', '-f', '-t', '0', container.id).catch((err) => failures.push(err));
    if (mountsOfType(fs.readFileSync('/proc/self/mountinfo', 'utf8'), 'bpf').includes(bpffs)) {
      await execFileP('umount', [bpffs]).catch((err) => failures.push(err));
    }
    fs.rmSync(tmp, { recursive: true, force: true });
    expect(await waitForProgramsGone(progIds)).toEqual([]);
    expect(failures).toEqual([]);
  });

  it('before any cut, the container connects out and is connected to', async () => {
    expect(await connectOut(container!)).toBe('pong\nrc=0');
    expect(connections()).toBe(1);
    expect(await connectIn(container!)).toBe('data:hello');
  });

  it('a cut made by a process that has since exited stays: nothing gets out or in', async () => {
    const cut = await inChild<CutResult>('cutNetwork', options, { incidentId, cgroupPath: container!.cgroupPath });
    const cgroupId = Number(fs.statSync(`${CGROUP_ROOT}${container!.cgroupPath}`).ino);
    expect(cut).toMatchObject({ cut: true, already: false, incidentId, cgroupPath: container!.cgroupPath, cgroupId, releasedAt: null });
    expect(cut.links.map((l) => [l.direction, l.cgroupId, l.pin])).toEqual([
      ['ingress', cgroupId, path.join(bpffs, 'amber/netcut', incidentId, 'ingress')],
      ['egress', cgroupId, path.join(bpffs, 'amber/netcut', incidentId, 'egress')],
    ]);
    progIds.push(...cut.links.map((l) => l.progId));
    // the child is gone and this process holds none of them: only the pins do
    expect(programIdsHeldBy(process.pid).filter((id) => progIds.includes(id))).toEqual([]);
    expect(programsLoaded(progIds).sort()).toEqual(['amber_netcut_egress', 'amber_netcut_ingress']);

    expect(await connectOut(container!)).toBe('nc: timed out\nrc=1');
    expect(connections()).toBe(1);
    expect(await connectIn(container!)).toBe('timeout');

    const [state] = await responses.listCuts();
    expect(state).toMatchObject({ incidentId, cgroupPath: container!.cgroupPath, cgroupId, at: cut.at, inForce: true, pinned: true, recorded: true });
    expect(state.drops!.egress).toBeGreaterThanOrEqual(1); // the SYN and its retransmits: how many depends on timing
    expect(state.drops!.ingress).toBeGreaterThanOrEqual(1);
    const record = JSON.parse(fs.readFileSync(path.join(options.dataDir, 'incidents/.responses', `${incidentId}.json`), 'utf8'));
    expect(record).toEqual({ ...cut, cut: undefined, already: undefined });
  });

  it('cutting the same incident again changes nothing', async () => {
    const [before] = await responses.listCuts();
    const again = await responses.cutNetwork({ incidentId, cgroupPath: container!.cgroupPath });
    expect(again).toMatchObject({ cut: true, already: true, at: before.at });
    expect(again.links.map((l) => l.progId)).toEqual(progIds);
    expect(programIdsHeldBy(process.pid).filter((id) => progIds.includes(id))).toEqual([]);
  });

  it('refuses another cut of the same incident on another cgroup', async () => {
    await expect(responses.cutNetwork({ incidentId, cgroupPath: scratch.path })).rejects.toThrow(
      `incident ${incidentId} already cuts another cgroup (id ${Number(fs.statSync(`${CGROUP_ROOT}${container!.cgroupPath}`).ino)}): release it first`,
    );
  });

  it('release from another process lets traffic through again and frees the programs', async () => {
    const [before] = await responses.listCuts();
    const released = await inChild<ReleaseResult>('releaseNetwork', options, incidentId);
    expect(released).toMatchObject({ released: true, incidentId, cgroupPath: container!.cgroupPath, unpinned: ['ingress', 'egress', 'drops'] });
    expect(released.drops!.egress).toBeGreaterThanOrEqual(before.drops!.egress);
    expect(await waitForProgramsGone(progIds)).toEqual([]);
    expect(fs.readdirSync(path.join(bpffs, 'amber/netcut'))).toEqual([]);

    expect(await connectOut(container!)).toBe('pong\nrc=0');
    expect(connections()).toBe(2);
    expect(await connectIn(container!)).toBe('data:hello');

    expect(await responses.listCuts()).toEqual([]);
    const record = JSON.parse(fs.readFileSync(path.join(options.dataDir, 'incidents/.responses', `${incidentId}.json`), 'utf8'));
    expect(record).toMatchObject({ incidentId, releasedAt: released.at, drops: released.drops });
    expect(await responses.releaseNetwork(incidentId)).toMatchObject({ released: false, reason: `already released at ${released.at}` });
    expect(await responses.releaseNetwork('inc-never')).toMatchObject({ released: false, reason: 'no cut for this incident' });
  });

  it('a cut whose container is removed is reported not in force, and still released', async () => {
    const doomed = await startIsolated(uniqueName('amber-cut-gone'));
    let removed = false;
    try {
      const cut = await responses.cutNetwork({ incidentId: 'inc-gone', cgroupPath: doomed.cgroupPath });
      progIds.push(...cut.links.map((l) => l.progId));
      expect((await responses.listCuts()).map((s) => [s.incidentId, s.inForce])).toEqual([['inc-gone', true]]);
      await podman('rm', '-f', '-t', '0', doomed.id);
      removed = true;
      // the kernel detaches a cgroup's links once the cgroup is freed, shortly after its rmdir
      let state = (await responses.listCuts())[0];
      for (let i = 0; i < 100 && state.inForce; i++) {
        await new Promise((r) => setTimeout(r, 50));
        state = (await responses.listCuts())[0];
      }
      expect(state).toMatchObject({ incidentId: 'inc-gone', cgroupPath: doomed.cgroupPath, inForce: false, pinned: true, recorded: true });
      expect(await responses.releaseNetwork('inc-gone')).toMatchObject({ released: true, unpinned: ['ingress', 'egress', 'drops'] });
      expect(await waitForProgramsGone(cut.links.map((l) => l.progId))).toEqual([]);
      expect(await responses.listCuts()).toEqual([]);
    } finally {
      if (!removed) await podman('rm', '-f', '-t', '0', doomed.id);
    }
  });

  it('a record it cannot read is listed with the reason and left in place; its cut is released all the same', async () => {
    const cut = await responses.cutNetwork({ incidentId: 'inc-garbled', cgroupPath: container!.cgroupPath });
    progIds.push(...cut.links.map((l) => l.progId));
    const file = path.join(options.dataDir, 'incidents/.responses/inc-garbled.json');
    fs.writeFileSync(file, '{"incidentId": "inc-garbled", trunc');
    const [state] = await responses.listCuts();
    expect(state).toMatchObject({ incidentId: 'inc-garbled', cgroupPath: null, inForce: true, pinned: true, recorded: false });
    expect(state.recordError).toMatch(/^cut record of inc-garbled is not JSON: /);
    const released = await responses.releaseNetwork('inc-garbled');
    expect(released).toMatchObject({ released: true, cgroupPath: null, unpinned: ['ingress', 'egress', 'drops'] });
    expect(released.recordError).toMatch(/^cut record of inc-garbled is not JSON: /);
    expect(fs.readFileSync(file, 'utf8')).toBe('{"incidentId": "inc-garbled", trunc');
    expect(await waitForProgramsGone(cut.links.map((l) => l.progId))).toEqual([]);
    expect(await connectOut(container!)).toBe('pong\nrc=0');
    fs.unlinkSync(file);
    expect(await responses.listCuts()).toEqual([]);
  });

  it('refuses bad incident ids and cgroup paths with a clear error, pinning nothing', async () => {
    const cases: Array<[string, string, string]> = [
      ['../escape', container!.cgroupPath, 'invalid incident id "../escape"'],
      ['inc-bad', 'libpod_parent', 'cgroup path "libpod_parent" must be absolute'],
      ['inc-bad', '/libpod_parent/../libpod_parent', "has '.' or '..' components"],
      ['inc-bad', '/', 'refusing the root cgroup: that is the whole host'],
      ['inc-bad', '/no-such-cgroup', `cgroup /no-such-cgroup is not a directory under ${CGROUP_ROOT}`],
      ['inc-bad', `${container!.cgroupPath}/cgroup.procs`, `is not a directory under ${CGROUP_ROOT}`],
    ];
    for (const [id, cgroupPath, message] of cases) {
      const err = await responses.cutNetwork({ incidentId: id, cgroupPath }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ResponseError);
      expect((err as Error).message).toContain(message);
    }
    expect(fs.readdirSync(path.join(bpffs, 'amber/netcut'))).toEqual([]);
    expect(await responses.listCuts()).toEqual([]);
  });
});

describe('kill', () => {
  const responses = new Responses({ dataDir: '/nonexistent-unused' });
  const ids: string[] = [];

  afterAll(async () => {
    for (const id of ids) await podman('rm', '-f', '-t', '0', id);
  });

  async function startBusy(name: string): Promise<{ c: TestContainer; pids: number[] }> {
    // three processes: the shell and two sleeps
    const c = await startIsolated(name, 'sh', '-c', 'sleep 3600 & sleep 3600 & wait');
    ids.push(c.id);
    const procs = `${CGROUP_ROOT}${c.cgroupPath}/cgroup.procs`;
    let pids: number[] = [];
    for (let i = 0; i < 100 && pids.length < 3; i++) {
      pids = fs.readFileSync(procs, 'utf8').split('\n').filter(Boolean).map(Number).sort((a, b) => a - b);
      if (pids.length < 3) await new Promise((r) => setTimeout(r, 20));
    }
    expect(pids).toHaveLength(3);
    return { c, pids };
  }

  async function expectExited(c: TestContainer): Promise<void> {
    expect(await podman('wait', c.id)).toBe('137'); // 128 + SIGKILL
    expect(await podman('inspect', '-f', '{{.State.Status}}', c.id)).toBe('exited');
    expect(fs.existsSync(`/proc/${c.pid}`)).toBe(false);
  }

  it('kills every process of the container through cgroup.kill; podman sees it exit', async () => {
    const { c, pids } = await startBusy(uniqueName('amber-kill'));
    const result = await responses.killContainer({ cgroupPath: c.cgroupPath });
    expect(result).toMatchObject({ killed: true, method: 'cgroup.kill', cgroupPath: c.cgroupPath, pids, signalled: [], rounds: 1, remaining: [] });
    for (const pid of pids) expect(fs.existsSync(`/proc/${pid}`)).toBe(false);
    await expectExited(c);
  });

  it('without cgroup.kill, sends SIGKILL to every pid until none is left', async () => {
    const { c, pids } = await startBusy(uniqueName('amber-kill-sig'));
    const result = await responses.killContainer({ cgroupPath: c.cgroupPath }, { cgroupKill: false });
    expect(result).toMatchObject({ killed: true, method: 'sigkill', cgroupPath: c.cgroupPath, pids, remaining: [] });
    // the container's init dying takes the rest of its PID namespace with it: a later kill() may find its pid gone
    expect(result.signalled.length).toBeGreaterThanOrEqual(1);
    expect(pids).toEqual(expect.arrayContaining(result.signalled));
    expect(result.rounds).toBeGreaterThanOrEqual(1);
    for (const pid of pids) expect(fs.existsSync(`/proc/${pid}`)).toBe(false);
    await expectExited(c);
  });

  it('refuses the root cgroup', async () => {
    await expect(responses.killContainer({ cgroupPath: '/' })).rejects.toThrow('refusing the root cgroup: that is the whole host');
    await expect(responses.killContainer({ cgroupPath: '/../..' })).rejects.toThrow("has '.' or '..' components");
  });

  it('refuses the cgroup the agent runs in and its ancestors, killing nothing', async () => {
    fs.mkdirSync(`${scratch.dir}/agent`);
    // a child moves itself into scratch/agent, then is asked to kill its own cgroup and its parent
    const script = `const fs = require('node:fs');
const { Responses } = require(${JSON.stringify(RESPONSES_JS)});
fs.writeFileSync(${JSON.stringify(`${scratch.dir}/agent/cgroup.procs`)}, String(process.pid));
const r = new Responses({ dataDir: '/nonexistent-unused' });
const attempt = (cgroupPath) => r.killContainer({ cgroupPath }).then((x) => 'killed', (e) => e.message);
Promise.all([attempt(${JSON.stringify(`${scratch.path}/agent`)}), attempt(${JSON.stringify(scratch.path)})]).then((m) => process.stdout.write(JSON.stringify(m)));`;
    const { stdout } = await execFileP(process.execPath, ['-e', script]);
    expect(JSON.parse(stdout)).toEqual([
      `refusing cgroup ${scratch.path}/agent: the agent itself runs in it (${scratch.path}/agent)`,
      `refusing cgroup ${scratch.path}: the agent itself runs in it (${scratch.path}/agent)`,
    ]);
  });
});
