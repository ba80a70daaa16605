/**
 * Memory dumps of real container processes (podman, runc, hybrid cgroups):
 * the ELF core read back by gdb (marker string at the address grepCore found,
 * registers, threads, the region table against /proc/<pid>/maps), the byte
 * bound, the cgroup freezer (v2, the v1 fallback, a container paused by
 * someone else) and that no failure, not even kill -9 of the freezing
 * process, leaves a container frozen once recover() has run.
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { grepCore, formatHit, readCoreLayout, type CoreHit } from '../../src/incident/core-grep';
import { CgroupFreezer, cgroupsOf, FROZEN_DIR, type FrozenCgroup } from '../../src/incident/freezer';
import { INCIDENTS_DIR } from '../../src/incident/manifest';
import { dumpProcessMemory, type MapsFile, type MemoryRegion } from '../../src/incident/memory';
import { buildHolder, gdb, type Holder, startHolder as startHolderIn, threadStates, v2Dir } from '../helpers/memory-holder';
import { ensureTestImage, podman } from '../helpers/podman';

const V1_ROOT = '/sys/fs/cgroup/freezer';
const MiB = 1 << 20;

let binDir = '';
const containers: string[] = [];
const dirs: string[] = [];
const mounts: string[] = [];

function tempDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-memory-'));
  dirs.push(dir);
  return dir;
}

const startHolder = (mib: number, threads: number): Promise<Holder> => startHolderIn(binDir, mib, threads, containers);


function v1Dir(pid: number): string {
  return path.join(V1_ROOT, cgroupsOf(fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8')).freezer!);
}

function v2State(dir: string): { freeze: string; frozen: string } {
  return {
    freeze: fs.readFileSync(path.join(dir, 'cgroup.freeze'), 'utf8').trim(),
    frozen: /^frozen (\d)$/m.exec(fs.readFileSync(path.join(dir, 'cgroup.events'), 'utf8'))![1],
  };
}


function procMaps(pid: number): Pick<MemoryRegion, 'start' | 'end' | 'perms' | 'offset' | 'path'>[] {
  return fs
    .readFileSync(`/proc/${pid}/maps`, 'utf8')
    .trim()
    .split('\n')
    .map((line) => {
      const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) \S+ \d+\s*(.*)$/.exec(line)!;
      return { start: `0x${BigInt(`0x${m[1]}`).toString(16)}`, end: `0x${BigInt(`0x${m[2]}`).toString(16)}`, perms: m[3], offset: Number(`0x${m[4]}`), path: m[5] };
    });
}


async function collect(core: string, needle: string, regions?: MemoryRegion[]): Promise<CoreHit[]> {
  const hits: CoreHit[] = [];
  for await (const hit of grepCore(core, needle, { regions })) hits.push(hit);
  return hits;
}

function logSink(): { log: pino.Logger; events: () => Array<Record<string, unknown>> } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      lines.push(...chunk.toString().trim().split('\n'));
      done();
    },
  });
  return { log: pino({ level: 'info' }, sink), events: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

function records(dataDir: string): string[] {
  const dir = path.join(dataDir, INCIDENTS_DIR, FROZEN_DIR);
  return fs.existsSync(dir) ? fs.readdirSync(dir) : [];
}

/** <bundle>/memory/<pid>.core and .maps.json; the bundle directory exists (the capture made it), memory/ not yet. */
function paths(dataDir: string, pid: number): { corePath: string; mapsPath: string } {
  fs.mkdirSync(path.join(dataDir, 'bundle'), { recursive: true, mode: 0o700 });
  return { corePath: path.join(dataDir, 'bundle', 'memory', `${pid}.core`), mapsPath: path.join(dataDir, 'bundle', 'memory', `${pid}.maps.json`) };
}

beforeAll(async () => {
  await ensureTestImage();
  binDir = tempDir();
  fs.chmodSync(binDir, 0o755);
  buildHolder(binDir);
});

afterEach(async () => {
  for (const dir of mounts.splice(0)) execFileSync('umount', [dir]);
});

afterAll(async () => {
  for (const id of containers.splice(0)) {
    // never leave one frozen, even when a test failed half way
    const pid = Number(await podman('inspect', '-f', '{{.State.Pid}}', id).catch(() => '0'));
    if (pid > 0) {
      fs.writeFileSync(path.join(v2Dir(pid), 'cgroup.freeze'), '0');
      fs.writeFileSync(path.join(v1Dir(pid), 'freezer.state'), 'THAWED');
    }
    await podman('rm', '-f', '-t', '0', id);
  }
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

describe('memory dumps (ptrace, ELF core, gdb)', () => {
  it('writes a core gdb reads: the marker at the address grepCore reports, registers, threads, the maps at dump time', async () => {
    const h = await startHolder(16, 3);
    const dataDir = tempDir();
    const { log, events } = logSink();
    const freezer = new CgroupFreezer({ dataDir, log });
    const tasks = fs.readdirSync(`/proc/${h.pid}/task`).map(Number).sort((a, b) => a - b);
    const mapsBefore = procMaps(h.pid);
    const { corePath, mapsPath } = paths(dataDir, h.pid);

    const r = await dumpProcessMemory(h.pid, { corePath, mapsPath, maxBytes: 1024 * MiB, freezer });

    // frozen with v2 during the dump, thawed after; nothing traced or stopped, no record left
    expect(r.frozen).toMatchObject({ path: v2Dir(h.pid), version: 2, alreadyFrozen: false });
    expect(events().filter((e) => String(e.event).startsWith('freezer-')).map((e) => [e.event, e.cgroup])).toEqual([
      ['freezer-frozen', cgroupsOf(fs.readFileSync(`/proc/${h.pid}/cgroup`, 'utf8')).v2],
      ['freezer-thawed', cgroupsOf(fs.readFileSync(`/proc/${h.pid}/cgroup`, 'utf8')).v2],
    ]);
    expect(v2State(v2Dir(h.pid))).toEqual({ freeze: '0', frozen: '0' });
    expect(threadStates(h.pid)).toEqual(tasks.map(() => 'live tracer 0'));
    expect(records(dataDir)).toEqual([]);

    // every thread, the leader first; the maps as they were
    expect(r.threads.map((t) => t.tid).sort((a, b) => a - b)).toEqual(tasks);
    expect(tasks).toHaveLength(4);
    expect(r.threads[0].tid).toBe(h.pid);
    expect(r.regions.map(({ start, end, perms, offset, path: p }) => ({ start, end, perms, offset, path: p }))).toEqual(mapsBefore);
    for (const region of r.regions) {
      const size = Number(BigInt(region.end) - BigInt(region.start));
      if (region.perms[0] !== 'r') {
        expect(region).toMatchObject({ dumped: 0, skipped: `not readable (${region.perms})` });
      } else if (region.path === '[vvar]' || region.path === '[vvar_vclock]') {
        expect(region).toMatchObject({ dumped: 0, skipped: 'unreadable: Input/output error' });
      } else {
        expect({ path: region.path, dumped: region.dumped, skipped: region.skipped }).toEqual({ path: region.path, dumped: size, skipped: undefined });
      }
    }
    expect(r.dumpedBytes).toBe(r.regions.reduce((sum, x) => sum + x.dumped, 0));
    expect(r.dumpedBytes).toBeGreaterThan(16 * MiB);
    expect(r.skipped).toBe(r.regions.filter((x) => x.skipped).length);

    // both files owner-only; the maps file says the same as the result
    expect(fs.statSync(corePath).mode & 0o777).toBe(0o600);
    expect(fs.statSync(mapsPath).mode & 0o777).toBe(0o600);
    expect(fs.statSync(corePath).size).toBe(r.bytes);
    const mapsFile = JSON.parse(fs.readFileSync(mapsPath, 'utf8')) as MapsFile;
    expect(mapsFile).toMatchObject({ pid: h.pid, comm: 'memory-holder', core: `${h.pid}.core`, maxBytes: 1024 * MiB, regions: r.regions, threads: r.threads });

    // the marker is on the heap only (argv holds its halves): one hit, and gdb reads it there
    const hits = await collect(corePath, h.marker, r.regions);
    expect(hits.map((x) => [x.pid, x.comm, x.region.path, x.region.perms])).toEqual([[h.pid, 'memory-holder', '[heap]', 'rw-']]);
    expect(hits[0].excerpt.join('\n')).toContain(h.marker.slice(0, 8));
    expect(formatHit(hits[0]).split('\n')[0]).toBe(
      `pid ${h.pid} (memory-holder) at ${hits[0].address} in ${hits[0].region.start}-${hits[0].region.end} rw- [heap], core offset ${hits[0].offset}`,
    );
    expect(gdb(corePath, `x/s ${hits[0].address}`)).toContain(`${hits[0].address}:\t"${h.marker}"`);
    // the filler (i * 7 + 1) is really there
    expect(gdb(corePath, `x/4xb 0x${h.filler.toString(16)}`)).toMatch(/:\s+0x01\s+0x08\s+0x0f\s+0x16/);

    // registers as recorded, every thread, the region table
    const regs = gdb(corePath, 'info registers rip rsp');
    expect(/^rip\s+(0x[0-9a-f]+)/m.exec(regs)![1]).toBe(r.threads[0].pc);
    expect(/^rsp\s+(0x[0-9a-f]+)/m.exec(regs)![1]).toBe(r.threads[0].sp);
    const threadRows = [...gdb(corePath, 'info threads').matchAll(/^[* ] +\d+ +LWP (\d+)/gm)].map((m) => Number(m[1]));
    expect(threadRows.sort((a, b) => a - b)).toEqual(tasks);
    const sections = [...gdb(corePath, 'maintenance info sections').matchAll(/(0x[0-9a-f]+)->(0x[0-9a-f]+) at 0x[0-9a-f]+: load\d+ (.*)$/gm)];
    expect(sections.map((m) => [BigInt(m[1]), BigInt(m[2]), m[3].includes('HAS_CONTENTS')])).toEqual(
      r.regions.map((x) => [BigInt(x.start), BigInt(x.end), x.dumped > 0]),
    );
  });

  it('keeps to the byte bound: mappings that do not fit are skipped, listed and left empty in the core', async () => {
    const h = await startHolder(16, 1);
    const dataDir = tempDir();
    const { corePath, mapsPath } = paths(dataDir, h.pid);
    const r = await dumpProcessMemory(h.pid, { corePath, mapsPath, maxBytes: 4 * MiB });

    expect(r.dumpedBytes).toBeLessThanOrEqual(4 * MiB);
    const filler = r.regions.find((x) => BigInt(x.start) === h.filler)!;
    expect(filler).toMatchObject({ dumped: 0, end: `0x${(h.filler + BigInt(16 * MiB)).toString(16)}` });
    expect(filler.skipped).toMatch(new RegExp(`^over the byte bound: needs ${16 * MiB} bytes, \\d+ of ${4 * MiB} left$`));
    const overBound = r.regions.filter((x) => x.skipped?.startsWith('over the byte bound'));
    expect(overBound.length).toBeGreaterThanOrEqual(2); // the filler and the thread's 8 MiB stack
    expect((JSON.parse(fs.readFileSync(mapsPath, 'utf8')) as MapsFile).regions.filter((x) => x.skipped?.startsWith('over'))).toEqual(overBound);

    // in the core: a PT_LOAD with nothing in the file; gdb cannot read it, the heap it can
    const fh = await fs.promises.open(corePath, 'r');
    const layout = await readCoreLayout(fh);
    await fh.close();
    expect(layout.segments.find((s) => s.vaddr === h.filler)).toMatchObject({ filesz: 0, memsz: BigInt(16 * MiB) });
    expect(gdb(corePath, `x/4xb 0x${h.filler.toString(16)}`)).not.toMatch(/0x01\s+0x08/);
    const hits = await collect(corePath, h.marker);
    expect(hits).toHaveLength(1);
    expect(gdb(corePath, `x/s ${hits[0].address}`)).toContain(`"${h.marker}"`);

    // a bound of 0: registers and notes only
    const zero = paths(tempDir(), h.pid);
    const none = await dumpProcessMemory(h.pid, { ...zero, maxBytes: 0 });
    expect(none.dumpedBytes).toBe(0);
    expect(none.regions.filter((x) => x.perms[0] === 'r').every((x) => x.skipped?.startsWith('over the byte bound'))).toBe(true);
    expect(/^rip\s+(0x[0-9a-f]+)/m.exec(gdb(zero.corePath, 'info registers rip'))![1]).toBe(none.threads[0].pc);
  });
});

describe('the freezer never leaves a container frozen', () => {
  it('a bad bound is refused before anything is stopped, frozen or created', async () => {
    const h = await startHolder(0, 0);
    const dataDir = tempDir();
    const freezer = new CgroupFreezer({ dataDir, log: pino({ level: 'silent' }) });
    for (const maxBytes of [-1, Number.NaN, 1.5]) {
      const { corePath, mapsPath } = paths(dataDir, h.pid);
      await expect(dumpProcessMemory(h.pid, { corePath, mapsPath, maxBytes, freezer })).rejects.toMatchObject({
        name: 'MemoryDumpError',
        code: 'EINVAL',
        message: `maxBytes must be a whole number of bytes >= 0, not ${maxBytes}`,
      });
      expect(fs.existsSync(corePath)).toBe(false);
    }
    expect(v2State(v2Dir(h.pid))).toEqual({ freeze: '0', frozen: '0' });
  });

  it('a write that fails mid-dump (ENOSPC) thaws, detaches and leaves no files', async () => {
    const h = await startHolder(16, 1);
    const dataDir = tempDir();
    const small = path.join(dataDir, 'small');
    fs.mkdirSync(small, { mode: 0o700 });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'amber-test', small]);
    mounts.push(small);
    const { log, events } = logSink();
    const freezer = new CgroupFreezer({ dataDir, log });
    const corePath = path.join(small, `${h.pid}.core`);
    const mapsPath = path.join(small, `${h.pid}.maps.json`);
    await expect(dumpProcessMemory(h.pid, { corePath, mapsPath, maxBytes: 1024 * MiB, freezer })).rejects.toMatchObject({
      code: 'ENOSPC',
      message: `memory dump of process ${h.pid}: cannot write the core: No space left on device`,
    });
    expect(events().map((e) => e.event)).toEqual(['freezer-frozen', 'freezer-thawed']);
    expect(v2State(v2Dir(h.pid))).toEqual({ freeze: '0', frozen: '0' });
    expect(threadStates(h.pid)).toEqual(['live tracer 0', 'live tracer 0']);
    expect(fs.readdirSync(small)).toEqual([]);
    expect(records(dataDir)).toEqual([]);
  });

  it('a process killed mid-dump fails the dump clearly and its container is thawed', async () => {
    const h = await startHolder(0, 0);
    await podman('exec', '-d', h.id, '/amber/memory-holder', 'SECOND', 'x', '1', '0');
    const procs = path.join(v2Dir(h.pid), 'cgroup.procs');
    let second = 0;
    const deadline = Date.now() + 10_000;
    while (second === 0 && Date.now() < deadline) {
      second = fs.readFileSync(procs, 'utf8').trim().split('\n').map(Number).find((p) => p !== h.pid && fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'memory-holder') ?? 0;
      if (second === 0) await new Promise((r) => setTimeout(r, 50));
    }
    expect(second).toBeGreaterThan(0);

    /** A real freezer that, once the cgroup is frozen, kills the process being dumped (SIGKILL reaches a stopped one). */
    class KillingFreezer extends CgroupFreezer {
      override async freeze(pid: number): Promise<FrozenCgroup> {
        const frozen = await super.freeze(pid);
        process.kill(pid, 'SIGKILL');
        while (fs.readFileSync(`/proc/${pid}/maps`, 'utf8') !== '') await new Promise((r) => setTimeout(r, 5));
        return frozen;
      }
    }
    const dataDir = tempDir();
    const { corePath, mapsPath } = paths(dataDir, second);
    await expect(
      dumpProcessMemory(second, { corePath, mapsPath, maxBytes: 1024 * MiB, freezer: new KillingFreezer({ dataDir, log: pino({ level: 'silent' }) }) }),
    ).rejects.toMatchObject({ code: 'ESRCH', message: `memory dump of process ${second}: process ${second} exited before its memory could be read` });
    expect(v2State(v2Dir(h.pid))).toEqual({ freeze: '0', frozen: '0' });
    expect(threadStates(h.pid)).toEqual(['live tracer 0']);
    expect(fs.existsSync(corePath) || fs.existsSync(mapsPath)).toBe(false);
    expect(records(dataDir)).toEqual([]);
  });

  it('kill -9 of the process that froze a container: recover() at the next start thaws it', async () => {
    const h = await startHolder(0, 0);
    const dataDir = tempDir();
    const child = spawn(process.execPath, [path.join(__dirname, '..', 'helpers', 'freeze-and-hang.cjs'), dataDir, String(h.pid)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise((resolve) => child.on('exit', resolve));
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const deadline = Date.now() + 30_000;
    while (!out.includes('\n') && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(out).toBe(`frozen ${v2Dir(h.pid)}\n`);
    child.kill('SIGKILL');
    await exited;

    // left frozen by the dead agent, and recorded
    expect(v2State(v2Dir(h.pid))).toEqual({ freeze: '1', frozen: '1' });
    expect(records(dataDir)).toHaveLength(1);

    const { log, events } = logSink();
    expect(await new CgroupFreezer({ dataDir, log }).recover()).toEqual([v2Dir(h.pid)]);
    expect(events().map((e) => [e.event, e.pid])).toContainEqual(['freezer-recovered', h.pid]);
    const until = Date.now() + 5000;
    while (v2State(v2Dir(h.pid)).frozen !== '0' && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    expect(v2State(v2Dir(h.pid))).toEqual({ freeze: '0', frozen: '0' });
    expect(records(dataDir)).toEqual([]);
    expect(await new CgroupFreezer({ dataDir, log }).recover()).toEqual([]);
  });

  it('a freeze that starts while the same cgroup is being thawed waits for the thaw: frozen, recorded, then thawed', async () => {
    const h = await startHolder(0, 0);
    const dataDir = tempDir();
    const freezer = new CgroupFreezer({ dataDir, log: pino({ level: 'silent' }) });
    const outcomes = new Set<string>();
    // the next dump (or a freeze response) starting while the last one's thaw runs: at different points of that thaw
    for (let i = 0; i < 120; i++) {
      const first = await freezer.freeze(h.pid);
      const thawing = first.thaw();
      for (let k = 0; k < i % 4; k++) await new Promise((r) => setImmediate(r));
      const second = await freezer.freeze(h.pid);
      await thawing;
      const state = { alreadyFrozen: second.alreadyFrozen, ...v2State(v2Dir(h.pid)), records: records(dataDir).length };
      await second.thaw();
      outcomes.add(JSON.stringify({ ...state, after: v2State(v2Dir(h.pid)), recordsAfter: records(dataDir).length }));
    }
    expect([...outcomes].map((o) => JSON.parse(o))).toEqual([
      { alreadyFrozen: false, freeze: '1', frozen: '1', records: 1, after: { freeze: '0', frozen: '0' }, recordsAfter: 0 },
    ]);
  });

  it('falls back to the v1 freezer (ptrace stop first, then freeze) when v2 cannot be used', async () => {
    const h = await startHolder(1, 1);
    const dataDir = tempDir();
    const notCgroup2 = tempDir();
    const { log, events } = logSink();
    const freezer = new CgroupFreezer({ dataDir, log, cgroupV2Root: notCgroup2 });
    const { corePath, mapsPath } = paths(dataDir, h.pid);
    const r = await dumpProcessMemory(h.pid, { corePath, mapsPath, maxBytes: 1024 * MiB, freezer });
    expect(r.frozen).toMatchObject({ path: v1Dir(h.pid), version: 1, alreadyFrozen: false });
    expect(events().filter((e) => e.event === 'freezer-frozen').map((e) => e.version)).toEqual([1]);
    expect(fs.readFileSync(path.join(v1Dir(h.pid), 'freezer.state'), 'utf8').trim()).toBe('THAWED');
    expect(threadStates(h.pid)).toEqual(['live tracer 0', 'live tracer 0']);
    expect((await collect(corePath, h.marker)).length).toBe(1);
  });

  it('a container paused by someone else (podman pause, v1) stays paused: the freezer leaves it, the dump says why it cannot stop it', async () => {
    const h = await startHolder(0, 0);
    await podman('pause', h.id);
    try {
      const dataDir = tempDir();
      const freezer = new CgroupFreezer({ dataDir, log: pino({ level: 'silent' }) });
      const frozen = await freezer.freeze(h.pid);
      expect(frozen).toMatchObject({ version: 2, alreadyFrozen: true });
      await frozen.thaw();
      expect(fs.readFileSync(path.join(v1Dir(h.pid), 'freezer.state'), 'utf8').trim()).toBe('FROZEN');
      expect(records(dataDir)).toEqual([]);

      const { corePath, mapsPath } = paths(dataDir, h.pid);
      await expect(dumpProcessMemory(h.pid, { corePath, mapsPath, maxBytes: MiB, freezer, stopTimeoutMs: 500 })).rejects.toMatchObject({
        code: 'ETIMEDOUT',
        message: expect.stringMatching(new RegExp(`^memory dump of process ${h.pid}: thread ${h.pid} of process ${h.pid} did not stop within 500 ms`)),
      });
      expect(fs.readFileSync(path.join(v1Dir(h.pid), 'freezer.state'), 'utf8').trim()).toBe('FROZEN');
    } finally {
      await podman('unpause', h.id);
    }
    expect(threadStates(h.pid)).toEqual(['live tracer 0']);
  });

  it("refuses cgroups it must not freeze: the agent's own (or the root) and a pid that does not exist", async () => {
    const freezer = new CgroupFreezer({ dataDir: tempDir(), log: pino({ level: 'silent' }) });
    const own = cgroupsOf(fs.readFileSync('/proc/self/cgroup', 'utf8'));
    await expect(freezer.freeze(process.pid)).rejects.toThrow(
      own.v2 === '/'
        ? `cannot freeze the cgroup of process ${process.pid}: v2: cgroup "/" is the root or not a plain path; v1: cgroup "${own.freezer}" is the root or not a plain path`
        : `refusing to freeze cgroup ${own.v2} of process ${process.pid}: the agent itself runs in it`,
    );
    await expect(freezer.freeze(999_999_999)).rejects.toThrow('process 999999999 does not exist');
  });
});
