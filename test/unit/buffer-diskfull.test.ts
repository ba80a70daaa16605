/**
 * Disk full: a 2 MiB tmpfs as the data dir (needs root to mount). The buffer
 * keeps running, reports once, bounds its memory by dropping the oldest
 * waiting events (counted), and writes again once space is freed.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, rm, rmdir } from 'node:fs/promises';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventBuffer } from '../../src/buffer';
import type { OpenEvent } from '../../src/sensor/events';
import { collect, KEEP_OLD, openEvent, T0, tempDir } from '../helpers/buffer-events';

const isRoot = process.getuid?.() === 0;

/** Open events with incompressible paths, so a few hundred KiB really take a few hundred KiB. */
function noisyEvents(from: number, count: number): OpenEvent[] {
  return Array.from({ length: count }, (_, i) =>
    openEvent(T0 + (from + i) * 1000, { pid: from + i, path: `/data/${randomBytes(24).toString('base64url')}` }),
  );
}

async function fillDisk(file: string): Promise<void> {
  const fh = await open(file, 'w');
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  try {
    for (;;) await fh.write(chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    await fh.close();
  }
}

/** The reports between "writing again" lines: one list per time the disk was full. */
function episodesOf(logs: string[], again: string): string[][] {
  const episodes: string[][] = [[]];
  for (const line of logs) {
    if (line === again) episodes.push([]);
    else episodes[episodes.length - 1].push(line);
  }
  return episodes.filter((e) => e.length > 0);
}

// Mounting the tmpfs needs root; `npm test` runs as root, and this fails loudly otherwise.
describe('disk full (tmpfs)', () => {
  let mountPoint: string;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    if (!isRoot) throw new Error('the disk-full test mounts a tmpfs: run it as root');
    ({ dir: mountPoint, cleanup } = await tempDir('amber-diskfull-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mountPoint]);
  });

  afterAll(async () => {
    if (!mountPoint) return;
    try {
      execFileSync('umount', [mountPoint]);
    } finally {
      await rmdir(mountPoint).catch(() => cleanup());
    }
  });

  it('keeps running, reports once, drops the oldest waiting events (counted) and resumes when space returns', async () => {
    const dataDir = path.join(mountPoint, 'data');
    await mkdir(dataDir);
    const logs: string[] = [];
    const buffer = await EventBuffer.open({
      ...KEEP_OLD,
      dataDir,
      flushIntervalMs: 50,
      blockBytes: 16 * 1024,
      segmentBytes: 128 * 1024,
      maxMemoryBytes: 256 * 1024,
      log: (level, msg) => logs.push(`${level}: ${msg}`),
    });
    try {
      for (let from = 0; from < 2000; from += 250) {
        buffer.append(noisyEvents(from, 250)); // batches well under the memory bound, as the agent's are
        await buffer.flush();
      }
      expect(buffer.stats()).toMatchObject({ events: 2000, writeError: null });

      const filler = path.join(mountPoint, 'filler');
      await fillDisk(filler);

      // Far more than memory may hold: ~1.2 MiB of compressed blocks against a 256 KiB bound.
      let next = 2000;
      for (let round = 0; round < 12; round++) {
        buffer.append(noisyEvents(next, 1500));
        next += 1500;
        await sleep(20);
      }
      await buffer.flush();
      const full = buffer.stats();
      expect(full.writeError).toBe('ENOSPC');
      expect(full.droppedEvents).toBeGreaterThan(0);
      expect(full.memoryEvents).toBeGreaterThan(0);
      expect(full.events + full.memoryEvents + full.droppedEvents).toBe(next);
      // Still queryable, including what waits in memory: a prefix, then the newest events.
      const during = await collect(buffer.query());
      expect(during.length).toBe(next - full.droppedEvents);

      await sleep(200); // more failed retries: still reported only once
      // Once per episode: a failed write that frees its partial bytes may let a smaller block into
      // them on a loaded machine (a short "writing again"), but no report repeats within an episode.
      const FULL = 'error: event buffer: disk full; keeping events in memory (bounded) and retrying every flush interval';
      const DROPPING = 'error: event buffer: events are not reaching the disk and memory is at its bound; dropping the oldest';
      const AGAIN = 'info: event buffer: writing again';
      const episodes = episodesOf(logs, AGAIN);
      expect(episodes.length).toBeGreaterThanOrEqual(1);
      for (const episode of episodes) expect([FULL, DROPPING]).toEqual(expect.arrayContaining(episode));
      expect(episodes.map((e) => e.filter((m) => m === FULL).length)).toEqual(episodes.map(() => 1));
      expect(episodes.flat().filter((m) => m === DROPPING).length).toBeGreaterThanOrEqual(1);
      expect(episodes.every((e) => e.filter((m) => m === DROPPING).length <= 1)).toBe(true);
      expect(logs.at(-1)).not.toBe(AGAIN); // still full now
      const reported = logs.length;

      await rm(filler);
      const after = noisyEvents(next, 500);
      buffer.append(after);
      next += 500;
      // It writes again at its next retry (every flush interval): wait for that, bounded.
      const deadline = Date.now() + 10_000;
      await buffer.flush();
      while ((buffer.stats().writeError !== null || buffer.stats().memoryEvents > 0) && Date.now() < deadline) {
        await sleep(50);
        await buffer.flush();
      }
      const resumed = buffer.stats();
      expect(resumed).toMatchObject({ writeError: null, memoryEvents: 0, droppedEvents: full.droppedEvents });
      expect(resumed.events).toBe(next - full.droppedEvents);
      expect(logs.slice(reported)).toEqual([AGAIN]);

      // What is kept: every event before the disk filled, every event after it emptied, and in
      // between whatever was not dropped, in order and each once (how many blocks squeezed into
      // the last free bytes of the tmpfs depends on timing, so the gaps may be more than one).
      const kept = (await collect(buffer.query())).map((e) => e.pid);
      expect(kept).toHaveLength(next - full.droppedEvents);
      expect(kept.slice(0, 2000)).toEqual(Array.from({ length: 2000 }, (_, i) => i));
      expect(kept.slice(-500)).toEqual(Array.from({ length: 500 }, (_, i) => next - 500 + i));
      for (let i = 1; i < kept.length; i++) expect(kept[i] > kept[i - 1]).toBe(true);
      expect(kept.at(-1)).toBe(next - 1);
    } finally {
      await buffer.close();
    }
    // Nothing torn was left behind by the failed writes.
    const ro = await EventBuffer.openReadOnly(dataDir);
    expect(ro.stats()).toMatchObject({ corruptBlocks: 0, events: buffer.stats().events });
    await ro.close();
  });
});
