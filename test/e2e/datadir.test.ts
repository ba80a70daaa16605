/**
 * The agent itself (the built CLI, real BPF) on a hostile and on a damaged data
 * dir: it refuses one another user can write to, naming why, and it starts on
 * one with a FIFO planted as a segment (which used to hang it before `started`),
 * moving the FIFO aside and saying so.
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

const CLI = path.resolve(__dirname, '../../dist/src/cli/main.js');

function agent(dataDir: string) {
  const child = spawn(process.execPath, [CLI, 'agent', '--data-dir', dataDir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let logs = '';
  child.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exited, logs: () => logs };
}

const dirs: string[] = [];
const children: ReturnType<typeof agent>[] = [];
afterEach(async () => {
  for (const a of children.splice(0)) {
    if (a.child.exitCode === null && a.child.signalCode === null) {
      a.child.kill('SIGKILL');
      await a.exited;
    }
  }
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function dataDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-datadir-'));
  dirs.push(d);
  return d;
}

describe('the agent on its data dir', () => {
  it('refuses a data dir others can write to, exit 1, naming the path and the mode', async () => {
    const dir = dataDir();
    fs.chmodSync(dir, 0o777);
    const a = agent(dir);
    children.push(a);
    expect(await a.exited).toBe(1);
    expect(a.logs()).toContain(`data dir ${dir} is writable by group and others (mode 0777): refusing to use it`);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('starts beside a FIFO planted as a segment, moving it aside and naming it', async () => {
    const dir = dataDir();
    fs.mkdirSync(path.join(dir, 'segments'), { mode: 0o700 });
    const fifo = path.join(dir, 'segments', 'segment-0000000000000001.amb');
    execFileSync('mkfifo', [fifo]);
    const a = agent(dir);
    children.push(a);
    const deadline = Date.now() + 60_000;
    while (!a.logs().includes('"event":"started"')) {
      if (a.child.exitCode !== null || Date.now() > deadline) throw new Error(`the agent did not start:\n${a.logs()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(a.logs()).toContain('moved a file it cannot read aside (quarantine)');
    expect(a.logs()).toContain(`"file":"${fifo}","to":"${path.join(dir, 'quarantine', 'segment-0000000000000001.amb')}"`);
    expect(fs.statSync(path.join(dir, 'quarantine', 'segment-0000000000000001.amb')).isFIFO()).toBe(true);
    execFileSync('/bin/true'); // at least one event to record
    a.child.kill('SIGTERM');
    expect(await a.exited).toBe(0);
    // It recorded into a new segment after the planted one's number.
    expect(fs.readdirSync(path.join(dir, 'segments')).filter((n) => n.endsWith('.amb'))).toEqual(['segment-0000000000000002.amb']);
  });
});
