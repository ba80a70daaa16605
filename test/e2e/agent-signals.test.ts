/**
 * SIGTERM always stops the agent within a bounded time, even with the largest
 * poll interval the configuration allows; a second SIGTERM is never ignored;
 * a value outside its range never starts an agent. The built CLI, the real kernel.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { RANGES } from '../../src/defaults';

const CLI = path.resolve(__dirname, '../../dist/src/cli/main.js');
const dirs: string[] = [];
const children: ChildProcess[] = [];

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function agent(env: NodeJS.ProcessEnv) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-signals-'));
  dirs.push(dataDir);
  const child = spawn(process.execPath, [CLI, 'agent', '--data-dir', dataDir], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  children.push(child);
  let logs = '';
  child.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<{ code: number | null; at: number }>((resolve) => child.on('exit', (code) => resolve({ code, at: Date.now() })));
  return { child, logs: () => logs, exited };
}

async function started(a: ReturnType<typeof agent>): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!a.logs().includes('"event":"started"')) {
    if (a.child.exitCode !== null || Date.now() > deadline) throw new Error(`the agent did not start:\n${a.logs()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits for the exit, failing the test after boundMs. */
async function exitWithin(a: ReturnType<typeof agent>, boundMs: number) {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the agent did not stop within ${boundMs} ms:\n${a.logs()}`)), boundMs);
  });
  try {
    return await Promise.race([a.exited, bound]);
  } finally {
    clearTimeout(timer);
  }
}

describe('amber agent and signals', () => {
  const largestPoll = `${RANGES.sensor.pollInterval.max}ms`;

  it(`stops on SIGTERM within a bounded time with the largest pollInterval (${largestPoll})`, async () => {
    const a = agent({ AMBER_SENSOR_POLL_INTERVAL: largestPoll });
    await started(a);
    const sent = Date.now();
    a.child.kill('SIGTERM');
    const { code, at } = await exitWithin(a, 10_000);
    expect(code).toBe(0);
    expect(a.logs()).toContain('"event":"stopped"');
    // one poll interval for the reader to notice, plus the flush: far from "forever"
    expect(at - sent).toBeLessThan(10_000);
  });

  it('does not ignore a second SIGTERM while stopping', async () => {
    const a = agent({ AMBER_SENSOR_POLL_INTERVAL: largestPoll });
    await started(a);
    a.child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 50));
    a.child.kill('SIGTERM');
    const { code } = await exitWithin(a, 10_000);
    // either the second signal ended it at once (143), or the first had already finished the clean stop (0)
    expect(code).toBe(a.logs().includes('"event":"stopped"') ? 0 : 143);
  });

  it.each([
    [{ AMBER_SENSOR_POLL_INTERVAL: '30d' }, 'environment AMBER_SENSOR_POLL_INTERVAL: sensor.pollInterval: must be 1ms to 1s, whole ms, got "30d"'],
    [{ AMBER_STATS_INTERVAL: '30d' }, 'environment AMBER_STATS_INTERVAL: statsInterval: must be 1s to 24h, got "30d"'],
    [{ AMBER_BUFFER_FLUSH_INTERVAL: '0ms' }, 'environment AMBER_BUFFER_FLUSH_INTERVAL: buffer.flushInterval: must be 10ms to 10m, got "0ms"'],
  ])('refuses %j before starting, naming the key and its source', async (env, message) => {
    const a = agent(env);
    const { code } = await exitWithin(a, 20_000);
    expect(code).toBe(1);
    expect(a.logs()).toContain(message);
    expect(a.logs()).not.toContain('"event":"started"');
  });
});
