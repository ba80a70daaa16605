/**
 * The buffer's parts on their own (store, query engine, freeze manager, lock,
 * damage log), on real files; the facade's behaviour is in buffer.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { appendFile, lstat, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EventBuffer } from '../../src/buffer';
import { decodeBlockPayload } from '../../src/buffer/block-codec';
import { type BufferLog, DamageLog } from '../../src/buffer/damage';
import { createExclusive, openRegular, quarantine, writeFileAtomic } from '../../src/buffer/datadir';
import { recoverSegments } from '../../src/buffer/recovery';
import { FreezeManager } from '../../src/buffer/freezer';
import { DataDirLock } from '../../src/buffer/lock';
import { QueryEngine } from '../../src/buffer/query-engine';
import { scanSegment } from '../../src/buffer/segment';
import { SegmentStore, type StoreOptions } from '../../src/buffer/store';
import type { AmberEvent } from '../../src/sensor/events';
import { collect, KEEP_OLD, sequenceEvents, T0, tempDir } from '../helpers/buffer-events';

let cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function dataDir(): Promise<string> {
  const tmp = await tempDir();
  cleanups.push(tmp.cleanup);
  await mkdir(path.join(tmp.dir, 'segments'), { mode: 0o700 });
  return tmp.dir;
}

const STORE: StoreOptions = {
  maxBytes: 1 << 30,
  maxAgeNs: 1e20,
  segmentBytes: 16 << 20,
  segmentMaxAgeMs: 3600_000,
  blockBytes: 1 << 20,
  maxMemoryBytes: 64 << 20,
  isPinned: () => false,
};

function logs(): { log: BufferLog; lines: string[] } {
  const lines: string[] = [];
  return { lines, log: (level, msg, fields) => lines.push(`${level}: ${msg}${fields ? ` ${JSON.stringify(fields)}` : ''}`) };
}

async function store(dir: string, opts: Partial<StoreOptions> = {}) {
  const { log } = logs();
  const s = new SegmentStore(dir, false, { ...STORE, ...opts }, log, new DamageLog(log));
  await s.load();
  cleanups.push(() => s.sealActive());
  return s;
}

async function allBatches(it: AsyncIterable<AmberEvent[]>): Promise<AmberEvent[]> {
  return (await collect(it)).flat();
}

describe('SegmentStore', () => {
  it('keeps appended events in the open block until flushed, then writes one block', async () => {
    const dir = await dataDir();
    const s = await store(dir);
    const events = sequenceEvents(0, 100);
    s.append(events);
    expect(s.memoryEvents()).toBe(100);
    expect(decodeBlockPayload(s.snapshot().open!)).toEqual(events);
    expect(s.segments).toHaveLength(0);
    await s.flush();
    expect(s.memoryEvents()).toBe(0);
    expect(s.snapshot().open).toBeNull();
    expect(s.segments).toHaveLength(1);
    expect(s.segments[0].blocks.map((b) => b.count)).toEqual([100]);
  });

  it('rotates to a new segment when the next frame would pass segmentBytes, and seals the old one with a sidecar', async () => {
    const dir = await dataDir();
    const s = await store(dir, { segmentBytes: 4096, blockBytes: 2048 });
    s.append(sequenceEvents(0, 200));
    await s.flush();
    await s.sealActive();
    expect(s.segments.length).toBeGreaterThan(1);
    for (const seg of s.segments) expect(seg.size).toBeLessThanOrEqual(4096 + 2048 * 2);
    const names = (await readdir(path.join(dir, 'segments'))).sort();
    expect(names.filter((n) => n.endsWith('.idx'))).toHaveLength(s.segments.length);
    expect(s.segments.reduce((n, seg) => n + seg.blocks.reduce((m, b) => m + b.count, 0), 0)).toBe(200);
  });

  it('retention deletes only segments it wrote or recovered, oldest first, and keeps pinned ones', async () => {
    const dir = await dataDir();
    let pinnedFrom = Infinity;
    const s = await store(dir, { segmentBytes: 4096, blockBytes: 2048, maxBytes: 10_000, isPinned: (ts) => ts >= pinnedFrom });
    pinnedFrom = T0; // everything pinned
    s.append(sequenceEvents(0, 400));
    await s.flush();
    const before = s.segments.length;
    expect(s.totalBytes()).toBeGreaterThan(10_000);
    pinnedFrom = Infinity;
    await s.enforceRetention();
    expect(s.segments.length).toBeLessThan(before);
    expect(s.totalBytes()).toBeLessThanOrEqual(10_000 + 8192);
    const onDisk = (await readdir(path.join(dir, 'segments'))).filter((n) => n.endsWith('.amb'));
    expect(onDisk).toHaveLength(s.segments.length);
  });
});

describe('QueryEngine', () => {
  it('merges written blocks, pending blocks and the open block in time order', async () => {
    const dir = await dataDir();
    const s = await store(dir, { blockBytes: 1024 });
    const early = sequenceEvents(0, 50);
    const late = sequenceEvents(50, 5);
    s.append(early);
    await s.flush();
    s.append(late); // stays in the open block (5 events < 1 KiB)
    const snapshot = s.snapshot();
    expect(decodeBlockPayload(snapshot.open!)).toHaveLength(5);
    const engine = new QueryEngine(new DamageLog(() => {}));
    expect(await allBatches(engine.batches(() => snapshot, {}))).toEqual([...early, ...late]);
    expect(await allBatches(engine.batches(() => snapshot, { since: late[0].ts }))).toEqual(late);
  });

  it('verify reads every block and counts the damaged ones', async () => {
    const dir = await dataDir();
    const s = await store(dir, { blockBytes: 1 });
    s.append(sequenceEvents(0, 3));
    await s.flush();
    const file = s.segments[0].file;
    const data = await readFile(file);
    data[s.segments[0].blocks[1].offset + 40] ^= 0xff;
    await writeFile(file, data);
    const damage = new DamageLog(() => {});
    expect(await new QueryEngine(damage).verify(s.snapshot())).toEqual({ blocks: 3, events: 2, damagedBlocks: 1 });
    expect(damage.count).toBe(1);
  });
});

describe('live queries', () => {
  it('do not close the open block: 200 queries between appends still write one block', async () => {
    const tmp = await tempDir();
    cleanups.push(tmp.cleanup);
    const buffer = await EventBuffer.open({ dataDir: tmp.dir, ...KEEP_OLD, flushIntervalMs: 60_000 });
    const events = sequenceEvents(0, 200);
    for (let i = 0; i < 200; i++) {
      buffer.append([events[i]]);
      const seen = await collect(buffer.query({ since: events[i].ts }));
      expect(seen).toEqual([events[i]]);
    }
    expect(await collect(buffer.query())).toEqual(events);
    await buffer.close();
    const segments = (await readdir(path.join(tmp.dir, 'segments'))).filter((n) => n.endsWith('.amb'));
    expect(segments).toHaveLength(1);
    const scan = await scanSegment(path.join(tmp.dir, 'segments', segments[0]));
    expect(scan.blocks.map((b) => b.count)).toEqual([200]);
  });

  it('see each event once when its block is written between the query call and the first read', async () => {
    const tmp = await tempDir();
    cleanups.push(tmp.cleanup);
    const buffer = await EventBuffer.open({ dataDir: tmp.dir, ...KEEP_OLD, flushIntervalMs: 60_000 });
    const first = sequenceEvents(0, 50);
    buffer.append(first);
    await buffer.flush(); // a segment being written
    const events = sequenceEvents(50, 50);
    buffer.append(events);
    const it = buffer.query();
    await buffer.flush(); // the open block goes into that segment before the query reads anything
    expect(await collect(it)).toEqual([...first, ...events]);
    await buffer.close();
  });
});

describe('FreezeManager', () => {
  it('pins from the window start until the export is written, and counts refusals past the caps', async () => {
    const tmp = await tempDir();
    cleanups.push(tmp.cleanup);
    await mkdir(path.join(tmp.dir, 'frozen'), { mode: 0o700 });
    const events = sequenceEvents(0, 10);
    let flushed = 0;
    const { log, lines } = logs();
    const freezer = new FreezeManager({
      dataDir: tmp.dir,
      maxFrozenWindows: 1,
      maxFrozenBytes: 1 << 20,
      graceMs: 0,
      log,
      flush: async () => void flushed++,
      query: async function* (filter) {
        yield events.filter((e) => e.ts >= filter.since! && e.ts <= filter.until!);
      },
    });
    const at = events[5].ts;
    const window = await freezer.freeze({ at, before: 2000, after: 0, reason: 'test' });
    expect(window.count).toBe(3);
    expect(flushed).toBe(1);
    expect(freezer.isPinned(T0 + 1e9)).toBe(false); // released once written
    await expect(freezer.freeze({ at, before: 0, after: 0, reason: 'second' })).rejects.toThrow(
      'frozen window "second" refused: 1 windows already kept or in progress (maxFrozenWindows 1)',
    );
    expect(freezer.refused).toBe(1);
    expect(lines.at(-1)).toMatch(/^warn: frozen window "second" refused/);
  });
});

describe('DataDirLock', () => {
  it('refuses a second holder naming the first one\'s PID, and is free again once released', async () => {
    const tmp = await tempDir();
    cleanups.push(tmp.cleanup);
    const first = await DataDirLock.acquire(tmp.dir);
    expect(await readFile(path.join(tmp.dir, 'LOCK'), 'utf8')).toBe(`${process.pid}\n`);
    await expect(DataDirLock.acquire(tmp.dir)).rejects.toThrow(
      `data dir ${tmp.dir} is in use by process ${process.pid} (lock file ${path.join(tmp.dir, 'LOCK')})`,
    );
    await first.release();
    const second = await DataDirLock.acquire(tmp.dir);
    await second.release();
  });
});

describe('DamageLog', () => {
  it('logs and counts each damaged place once', () => {
    const { log, lines } = logs();
    const damage = new DamageLog(log);
    damage.report('/d/s.amb', 16, 'block checksum mismatch');
    damage.report('/d/s.amb', 16, 'block checksum mismatch');
    damage.report('/d/s.amb', 99, 'x');
    expect(damage.count).toBe(2);
    expect(lines).toEqual([
      'warn: event buffer: skipping a damaged block {"file":"/d/s.amb","offset":16,"reason":"block checksum mismatch"}',
      'warn: event buffer: skipping a damaged block {"file":"/d/s.amb","offset":99,"reason":"x"}',
    ]);
  });
});

describe('datadir helpers', () => {
  it('writeFileAtomic replaces a planted link at its temp name without writing through it', async () => {
    const dir = await dataDir();
    const victim = path.join(dir, 'victim');
    await writeFile(victim, 'keep');
    await symlink(victim, path.join(dir, 'f.tmp'));
    await writeFileAtomic(path.join(dir, 'f'), Buffer.from('new'));
    expect(await readFile(victim, 'utf8')).toBe('keep');
    expect(await readFile(path.join(dir, 'f'), 'utf8')).toBe('new');
    expect((await lstat(path.join(dir, 'f'))).isFile()).toBe(true);
  });

  it('createExclusive refuses any existing name, a link included', async () => {
    const dir = await dataDir();
    await symlink('/nonexistent-target', path.join(dir, 'l'));
    await expect(createExclusive(path.join(dir, 'l'))).rejects.toThrow('EEXIST');
  });

  it('openRegular names what a non-regular file is, without blocking on a FIFO', async () => {
    const dir = await dataDir();
    execFileSync('mkfifo', [path.join(dir, 'fifo')]);
    await symlink(path.join(dir, 'fifo'), path.join(dir, 'link'));
    await expect(openRegular(path.join(dir, 'fifo'))).rejects.toThrow(`${path.join(dir, 'fifo')} is a FIFO, not a regular file`);
    await expect(openRegular(path.join(dir, 'link'))).rejects.toThrow(`${path.join(dir, 'link')} is a symbolic link, not a regular file`);
    await expect(openRegular(path.join(dir, 'segments'))).rejects.toThrow(`${path.join(dir, 'segments')} is a directory, not a regular file`);
  });

  it('quarantine moves a name aside, never over an earlier one', async () => {
    const dir = await dataDir();
    await writeFile(path.join(dir, 'segments', 'x'), '1');
    expect(await quarantine(dir, path.join(dir, 'segments', 'x'))).toBe(path.join(dir, 'quarantine', 'x'));
    await writeFile(path.join(dir, 'segments', 'x'), '2');
    expect(await quarantine(dir, path.join(dir, 'segments', 'x'))).toBe(path.join(dir, 'quarantine', 'x.1'));
    expect(await readFile(path.join(dir, 'quarantine', 'x'), 'utf8')).toBe('1');
    expect(await readFile(path.join(dir, 'quarantine', 'x.1'), 'utf8')).toBe('2');
  });
});

describe('recoverSegments', () => {
  it('rebuilds the block list from the files and truncates only the last segment\'s torn tail', async () => {
    const dir = await dataDir();
    const s = await store(dir, { blockBytes: 1, segmentBytes: 200 });
    s.append(sequenceEvents(0, 6));
    await s.flush();
    await s.sealActive();
    const files = s.segments.map((seg) => seg.file);
    expect(files.length).toBeGreaterThan(1);
    await appendFile(files[0], Buffer.from('torn tail of an older segment'));
    await appendFile(files.at(-1)!, Buffer.from('torn tail'));
    const { log, lines } = logs();
    const damage = new DamageLog(log);
    const recovered = await recoverSegments(dir, false, log, damage);
    expect(recovered.segments.map((seg) => seg.blocks.length).reduce((a, b) => a + b)).toBe(6);
    expect(recovered.nextSeq).toBe(files.length + 1);
    expect(damage.count).toBe(1); // the older segment's tail: reported and kept
    expect((await readFile(files[0])).subarray(-29).toString()).toBe('torn tail of an older segment');
    expect((await readFile(files.at(-1)!)).subarray(-9).toString()).not.toBe('torn tail');
    expect(lines.some((l) => l.startsWith('info: event buffer: dropping the torn tail of the last segment'))).toBe(true);
  });
});
