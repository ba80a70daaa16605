import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Unpackr } from 'msgpackr';
import { afterEach, describe, expect, it } from 'vitest';
import { EventBuffer, FreezeRefusedError, type FrozenWindow } from '../../src/buffer';
import type { AmberEvent } from '../../src/sensor/events';
import { collect, execEvent, KEEP_OLD, openEvent, sequenceEvents, T0, tempDir } from '../helpers/buffer-events';

let cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

async function openBuffer(opts: Partial<Parameters<typeof EventBuffer.open>[0]> = {}) {
  const tmp = await tempDir();
  cleanups.push(tmp.cleanup);
  const logs: string[] = [];
  const buffer = await EventBuffer.open({ ...KEEP_OLD, flushIntervalMs: 100, ...opts, dataDir: tmp.dir, log: (level, msg) => logs.push(`${level}: ${msg}`) });
  cleanups.push(() => buffer.close());
  return { dir: tmp.dir, buffer, logs };
}

const MS = 1e6;
const SEC = 1e9;

async function readWindow(dir: string, window: FrozenWindow) {
  const windowDir = path.join(dir, 'frozen', window.id);
  const msgpack = await readFile(path.join(windowDir, 'events.msgpack'));
  const jsonl = await readFile(path.join(windowDir, 'events.jsonl'));
  const json = JSON.parse(await readFile(path.join(windowDir, 'window.json'), 'utf8'));
  // Plain msgpack: a decoder without msgpackr's record extension reads it.
  const plain = new Unpackr({ useRecords: false, mapsAsObjects: true }).unpackMultiple(msgpack) as AmberEvent[];
  const lines = jsonl.toString('utf8').split('\n');
  expect(lines.pop()).toBe('');
  return {
    windowDir,
    json,
    fromMsgpack: plain,
    fromJsonl: lines.map((l) => JSON.parse(l) as AmberEvent),
    sha: {
      'events.msgpack': createHash('sha256').update(msgpack).digest('hex'),
      'events.jsonl': createHash('sha256').update(jsonl).digest('hex'),
    },
    bytes: msgpack.length + jsonl.length,
  };
}

describe('freeze', () => {
  it('exports [at-before, at+after], waiting for the events after `at`', async () => {
    const { dir, buffer } = await openBuffer();
    const at = Date.now() * 1e6;
    const tooEarly = openEvent(at - 11 * SEC, { pid: 1 });
    const first = openEvent(at - 10 * SEC, { pid: 2 }); // exactly at the start: included
    const middle = execEvent(at - 1 * SEC, { pid: 3, args: ['sh', '-c', 'id'] });
    buffer.append([tooEarly, first, middle]);
    await buffer.flush();

    const freezing = buffer.freeze({ at, before: 10 * SEC, after: 300 * MS, reason: 'rule: shell in container' });
    await sleep(100);
    const late = openEvent(at + 200 * MS, { pid: 4 }); // arrives while the buffer keeps collecting
    const last = openEvent(at + 300 * MS, { pid: 5 }); // exactly at the end: included
    const tooLate = openEvent(at + 301 * MS, { pid: 6 });
    buffer.append([late, last, tooLate]);
    const window = await freezing;

    const expected = [first, middle, late, last];
    const files = await readWindow(dir, window);
    expect(files.fromMsgpack).toEqual(expected);
    expect(files.fromJsonl).toEqual(expected);
    expect(window).toEqual({
      id: expect.stringMatching(/^\d{8}T\d{6}Z-[0-9a-f]{6}$/),
      reason: 'rule: shell in container',
      from: at - 10 * SEC,
      to: at + 300 * MS,
      created: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
      complete: true,
      count: 4,
      bytes: files.bytes,
      sha256: files.sha,
    });
    expect(files.json).toEqual(window);
    expect(await readdir(files.windowDir)).toEqual(['events.jsonl', 'events.msgpack', 'window.json']);
    for (const name of ['events.jsonl', 'events.msgpack', 'window.json']) {
      expect((await stat(path.join(files.windowDir, name))).mode & 0o777).toBe(0o444);
    }
    expect(buffer.stats().frozen).toEqual({ windows: [window], bytes: files.bytes, refused: 0 });
    // The buffer itself is untouched by the export.
    expect(await collect(buffer.query())).toEqual([tooEarly, first, middle, late, last, tooLate]);
  });

  it('applies a filter to the export and keeps the window listed after reopening', async () => {
    const { dir, buffer } = await openBuffer();
    const events = [openEvent(T0, { pid: 1 }), execEvent(T0 + 1, { pid: 2 }), execEvent(T0 + 2, { pid: 3, containerId: '' })];
    buffer.append(events);
    const window = await buffer.freeze({ at: T0, before: SEC, after: SEC, reason: 'exec only', filter: { types: ['exec'], scope: 'host' } });
    expect(window).toMatchObject({ count: 1, filter: { types: ['exec'], scope: 'host' } });
    expect((await readWindow(dir, window)).fromJsonl).toEqual([events[2]]);
    await buffer.close();
    const ro = await EventBuffer.openReadOnly(dir);
    expect(ro.stats().frozen.windows).toEqual([window]);
    await ro.close();
  });

  it('pins the window against retention until the export is written', async () => {
    const { buffer } = await openBuffer({ segmentBytes: 1, maxBytes: 1 }); // retention wants everything gone
    const now = Date.now() * 1e6;
    const inWindow = sequenceEvents(0, 50, now - 5 * SEC);
    buffer.append(inWindow);
    await buffer.flush();
    const freezing = buffer.freeze({ at: now, before: 6 * SEC, after: 200 * MS, reason: 'pinned' });
    await sleep(20);
    buffer.append(sequenceEvents(50, 50, now - 5 * SEC)); // rotates: the first segment becomes deletable
    await buffer.flush();
    expect(buffer.stats().segments).toBe(2);
    const window = await freezing;
    expect(window.count).toBe(100);
    await buffer.flush();
    expect(buffer.stats().segments).toBe(1); // unpinned: retention proceeds
  });

  it('refuses windows beyond the count cap, counting and logging each refusal', async () => {
    const { dir, buffer, logs } = await openBuffer({ maxFrozenWindows: 2 });
    buffer.append(sequenceEvents(0, 10));
    const pending = buffer.freeze({ before: 0, after: 300 * MS, reason: 'one' }); // in progress counts too
    await buffer.freeze({ at: T0, before: 0, after: SEC, reason: 'two' });
    const refusal = buffer.freeze({ at: T0, before: 0, after: SEC, reason: 'three' });
    await expect(refusal).rejects.toBeInstanceOf(FreezeRefusedError);
    await expect(refusal).rejects.toThrow('frozen window "three" refused: 2 windows already kept or in progress (maxFrozenWindows 2)');
    await pending;
    await expect(buffer.freeze({ at: T0, before: 0, after: 0, reason: 'four' })).rejects.toThrow('maxFrozenWindows 2');
    expect(buffer.stats().frozen.refused).toBe(2);
    expect(logs.filter((l) => l.startsWith('warn: frozen window'))).toEqual([
      'warn: frozen window "three" refused: 2 windows already kept or in progress (maxFrozenWindows 2)',
      'warn: frozen window "four" refused: 2 windows already kept or in progress (maxFrozenWindows 2)',
    ]);
    expect((await readdir(path.join(dir, 'frozen'))).length).toBe(2);
  });

  it('refuses a window that would exceed the byte cap, leaving nothing behind', async () => {
    const { dir, buffer } = await openBuffer({ maxFrozenBytes: 4000 });
    buffer.append(sequenceEvents(0, 100));
    await expect(buffer.freeze({ at: T0, before: 0, after: SEC, reason: 'big' })).rejects.toThrow(
      /^frozen window "big" exceeds the 4000 bytes left under the frozen-data cap \(maxFrozenBytes\) after \d+ events; nothing was kept$/,
    );
    expect(await readdir(path.join(dir, 'frozen'))).toEqual([]);
    const small = await buffer.freeze({ at: T0, before: 0, after: 2000, reason: 'small' }); // 3 events
    expect(small.count).toBe(3);
    expect(small.bytes).toBeLessThan(4000);
    expect(buffer.stats().frozen.refused).toBe(1);
  });

  it('finishes a pending freeze early on close, marked incomplete', async () => {
    const { dir, buffer } = await openBuffer();
    const at = Date.now() * 1e6;
    const event = openEvent(at - SEC);
    buffer.append([event]);
    const freezing = buffer.freeze({ at, before: 2 * SEC, after: 60 * SEC, reason: 'closing' });
    await sleep(50);
    const started = Date.now();
    await buffer.close();
    expect(Date.now() - started).toBeLessThan(5000);
    const window = await freezing;
    expect(window).toMatchObject({ complete: false, count: 1 });
    expect((await readWindow(dir, window)).fromJsonl).toEqual([event]);
  });

  it('rejects malformed requests', async () => {
    const { buffer } = await openBuffer();
    await expect(buffer.freeze({ before: -1, after: 0, reason: 'x' })).rejects.toThrow('before must be a non-negative number of ns');
    await expect(buffer.freeze({ before: 0, after: 2 * 3600 * SEC, reason: 'x' })).rejects.toThrow('after must be at most');
    await expect(buffer.freeze({ before: 0, after: 0, reason: ' ' })).rejects.toThrow('reason must be a non-empty string');
    await expect(buffer.freeze({ before: 0, after: 0, reason: 'x', filter: { types: ['nope' as never] } })).rejects.toThrow('unknown event type "nope"');
    expect(buffer.stats().frozen.refused).toBe(0);
  });
});
