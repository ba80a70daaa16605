/**
 * The data-dir lock as a DaemonSet meets it: the agent is PID 1 of its
 * container, killed (OOM, update) and restarted into the same data dir as PID 1
 * again. The lock is flock(2): the kernel drops it with its holder, so the
 * restart starts even though the LOCK file names a live PID (its own).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

const CLI = path.resolve(__dirname, '../../dist/src/cli/main.js');

interface Run {
  child: ChildProcess;
  logs: () => string;
  exited: Promise<number | null>;
}

function run(argv: string[]): Run {
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
  let logs = '';
  child.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, logs: () => logs, exited };
}

async function started(r: Run): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!r.logs().includes('"event":"started"')) {
    if (r.child.exitCode !== null || Date.now() > deadline) throw new Error(`the agent did not start:\n${r.logs()}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}

/** The agent as PID 1 of a new PID namespace (unshare forks it; --kill-child ties it to the wrapper). */
function agentAsPid1(dataDir: string): Run {
  return run(['unshare', '--pid', '--fork', '--kill-child', process.execPath, CLI, 'agent', '--data-dir', dataDir]);
}

/** The host PID of the wrapper's one child: the agent itself. */
function childOf(pid: number): number {
  const children = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
  expect(children).toHaveLength(1);
  return Number(children[0]);
}

const runs: Run[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const r of runs.splice(0)) {
    if (r.child.exitCode === null && r.child.signalCode === null) {
      // --kill-child: killing the wrapper kills the agent in its namespace too.
      r.child.kill('SIGKILL');
      await r.exited;
    }
  }
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function dataDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-lock-'));
  dirs.push(d);
  return d;
}

describe('data-dir lock', () => {
  it('lets an agent restarted as PID 1 take over from a killed PID 1 on the same data dir', async () => {
    const dir = dataDir();
    const first = agentAsPid1(dir);
    runs.push(first);
    await started(first);
    // Inside its namespace the agent is PID 1, and that is what the lock file names.
    expect(fs.readFileSync(path.join(dir, 'LOCK'), 'utf8')).toBe('1\n');
    const agentPid = childOf(first.child.pid!);
    expect(fs.readFileSync(`/proc/${agentPid}/status`, 'utf8')).toMatch(/^NSpid:\s+\d+\s+1$/m);
    process.kill(agentPid, 'SIGKILL'); // the agent itself, not only the wrapper
    expect(await first.exited).not.toBe(0);
    // The file still says 1, and PID 1 (the host's init) is alive: a PID lock would refuse here.
    expect(fs.readFileSync(path.join(dir, 'LOCK'), 'utf8')).toBe('1\n');

    const second = agentAsPid1(dir);
    runs.push(second);
    await started(second);
    expect(second.logs()).not.toContain('in use by');
    // unshare does not forward signals: stop the agent itself; the wrapper exits with its status.
    process.kill(childOf(second.child.pid!), 'SIGTERM');
    expect(await second.exited).toBe(0);
    expect(second.logs()).toContain('"event":"stopped"');
  });

  it('refuses a second live agent on the same data dir, naming the first one\'s PID', async () => {
    const dir = dataDir();
    const first = run([process.execPath, CLI, 'agent', '--data-dir', dir]);
    runs.push(first);
    await started(first);
    const second = run([process.execPath, CLI, 'agent', '--data-dir', dir]);
    runs.push(second);
    const code = await second.exited;
    expect(code).not.toBe(0);
    expect(second.logs()).toContain(`data dir ${dir} is in use by process ${first.child.pid} (lock file ${path.join(dir, 'LOCK')})`);
    expect(first.child.exitCode).toBeNull(); // the first one keeps recording
    first.child.kill('SIGTERM');
    expect(await first.exited).toBe(0);
  });
});
