/**
 * kill -9 at random moments while a child process appends at full speed: every
 * reopen must see exactly a prefix of the appended sequence, and appending
 * resumes right after it. The child runs the compiled buffer from dist/.
 */
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventBuffer } from '../../src/buffer';
import { tempDir } from '../helpers/buffer-events';

const require = createRequire(__filename);
const writerScript = path.join(__dirname, '../helpers/buffer-writer.cjs');
const writer = require(writerScript) as {
  DIST_BUFFER: string;
  WRITER_OPTIONS: Record<string, number>;
  BASE_TS: number;
  sequenceEvent: (seq: number) => object;
};

const ITERATIONS = 20;

/** The child runs dist/: refuse to test a missing or stale build. */
function assertBuildIsFresh(): void {
  const srcDir = path.join(__dirname, '../../src/buffer');
  const distDir = path.dirname(writer.DIST_BUFFER);
  for (const name of readdirSync(srcDir).filter((f) => f.endsWith('.ts'))) {
    const built = path.join(distDir, name.replace(/\.ts$/, '.js'));
    let builtAt: number;
    try {
      builtAt = statSync(built).mtimeMs;
    } catch {
      throw new Error(`${built} is missing: build first with \`npx tsc -p tsconfig.json\` (npm test's pretest does)`);
    }
    if (statSync(path.join(srcDir, name)).mtimeMs > builtAt) {
      throw new Error(`${built} is older than src/buffer/${name}: rebuild with \`npx tsc -p tsconfig.json\` before this test`);
    }
  }
}

/**
 * Runs the writer until SIGKILL `delayMs` after it has opened (recovered) the
 * buffer and started appending: counted from then, not from the spawn, so a
 * slow start on a loaded machine does not eat the time it appends in.
 * Resolves once the process is gone (and reaped).
 */
function runAndKill(dataDir: string, delayMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [writerScript, dataDir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let timer: NodeJS.Timeout | undefined;
    child.stdout.on('data', (d: Buffer) => {
      output += d.toString();
      if (!timer && output.includes('\n')) timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
    });
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (signal !== 'SIGKILL') reject(new Error(`writer exited by itself (code ${code}): ${output}`));
      else resolve(output);
    });
  });
}

/** Checks that the events from `from` on are exactly from, from+1, ... and returns how many there are in all. */
async function verifyPrefix(buffer: EventBuffer, from: number, context: string): Promise<number> {
  const total = buffer.stats().events;
  expect(total, context).toBeGreaterThanOrEqual(from);
  let expected = from;
  for await (const ev of buffer.query({ since: writer.BASE_TS + from * 1000 })) {
    const want = JSON.stringify(writer.sequenceEvent(expected));
    const got = JSON.stringify(ev);
    if (got !== want) expect(got, `${context}: event ${expected}`).toBe(want);
    expected++;
  }
  expect(expected, `${context}: events in the buffer`).toBe(total);
  return total;
}

describe('crash safety', () => {
  let dir: string;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    assertBuildIsFresh();
    ({ dir, cleanup } = await tempDir('amber-crash-'));
  });
  afterAll(() => cleanup?.());

  it(`keeps exactly a prefix of the appended sequence across ${ITERATIONS} kill -9s`, { timeout: 120_000 }, async () => {
    let verified = 0;
    let grew = 0;
    for (let i = 0; i < ITERATIONS; i++) {
      const delayMs = 50 + Math.floor(Math.random() * 750);
      const output = await runAndKill(dir, delayMs);
      const context = `iteration ${i}, killed after ${delayMs} ms (writer said: ${JSON.stringify(output)})`;
      const damage: string[] = [];
      // Read-only: must ignore a torn tail without touching it, and never yield a broken record.
      const ro = await EventBuffer.openReadOnly(dir, { log: (level, msg) => level === 'warn' && damage.push(msg) });
      const total = await verifyPrefix(ro, verified, context);
      await ro.close();
      expect(damage, context).toEqual([]);
      if (output.startsWith('resumed at ')) expect(output.split('\n')[0], context).toBe(`resumed at ${verified}`);
      if (total > verified) grew++;
      verified = total;
    }
    expect(grew, 'iterations in which the writer got events to disk').toBeGreaterThanOrEqual(ITERATIONS / 2);

    // A writer recovers the same prefix, checks it whole, and appends right after it.
    const rw = await EventBuffer.open({ dataDir: dir, ...writer.WRITER_OPTIONS });
    expect(await verifyPrefix(rw, 0, 'after recovery')).toBe(verified);
    const more = Array.from({ length: 100 }, (_, k) => writer.sequenceEvent(verified + k));
    rw.append(more as never);
    await rw.close();
    const ro = await EventBuffer.openReadOnly(dir);
    expect(await verifyPrefix(ro, verified, 'after appending again')).toBe(verified + 100);
    expect(ro.stats().corruptBlocks).toBe(0);
    await ro.close();
    const files = await readdir(path.join(dir, 'segments'));
    expect(files.filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });
});
