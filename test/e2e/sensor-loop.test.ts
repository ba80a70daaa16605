/**
 * The event loop keeps turning while the ring delivers faster than JavaScript
 * takes batches: timers, signals and closed pipes are never starved for longer
 * than the reader's pool of batches takes to process. Real kernel, a real open
 * storm, a listener made slower than the storm on purpose.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runChild } from '../../bench/workloads';
import { DEFAULTS } from '../../src/defaults';
import { Sensor } from '../../src/sensor/sensor';

const OPENS = 1_000_000;
/** What the listener spends per batch: far slower than the storm fills batches. */
const BATCH_MS = 40;

function busy(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

describe('the sensor under a storm JavaScript cannot keep up with', () => {
  const binDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-loop-'));
  afterAll(() => fs.rmSync(binDir, { recursive: true, force: true }));

  it('lets the event loop turn at least once per pool of batches', async () => {
    const openStorm = path.join(binDir, 'open-storm');
    execFileSync('cc', ['-O2', '-o', openStorm, path.resolve(__dirname, '../../bench/workloads/open-storm.c')]);
    let batches = 0;
    const sensor = await Sensor.start({ types: ['open'], ignoreSelf: true }, () => {
      batches++;
      busy(BATCH_MS);
    });
    let last = performance.now();
    let longestGap = 0;
    const ticker = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
    }, 10);
    try {
      await runChild(openStorm, [String(OPENS)]);
    } finally {
      clearInterval(ticker);
      await sensor.stop();
    }
    // The storm filled far more batches than the pool holds, so the listener was the bottleneck...
    expect(batches).toBeGreaterThan(2 * DEFAULTS.sensor.batchCount);
    // ...yet a turn of the loop never waited for more than the pool's batches (16 x 40 ms), with room for scheduling.
    expect(longestGap).toBeLessThan(DEFAULTS.sensor.batchCount * BATCH_MS + 1000);
  });
});
