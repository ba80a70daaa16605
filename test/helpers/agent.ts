/** The built `amber agent` as a node runs it, in a child process the test owns (stopped by its pid). */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';

export const CLI = path.resolve(__dirname, '../../dist/src/cli/main.js');
const execFileP = promisify(execFile);

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A CLI process that streams: `during` runs once it says it is tracing; resolves when it exits. */
export function amberStreaming(args: string[], during: (child: ReturnType<typeof spawn>, out: () => string, errText: () => string) => Promise<unknown>): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let started = false;
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (!started && stderr.includes('amber: tracing')) {
        started = true;
        during(child, () => stdout, () => stderr).catch((e) => {
          child.kill('SIGKILL');
          reject(e);
        });
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs the CLI to its end; a failing exit is a result, not an exception. */
export async function amber(...args: string[]): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [CLI, ...args], { maxBuffer: 512 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}


export interface RunningAgent {
  child: ChildProcess;
  logs: () => string;
  exited: Promise<number | null>;
  /** Its API socket, as `--server` takes it. */
  server: string;
}

/**
 * Starts the agent on `dataDir`; resolves once it logs that it is recording.
 * The API's socket lives in `${dataDir}-run/` unless `args` give a --listen:
 * never the node's /run/amber, which a real agent may hold.
 */
export async function startAgentProcess(dataDir: string, extraEnv: NodeJS.ProcessEnv = {}, args: string[] = []): Promise<RunningAgent> {
  const server = `unix://${dataDir}-run/amber.sock`;
  const child = spawn(process.execPath, [CLI, 'agent', '--data-dir', dataDir, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, AMBER_STATS_INTERVAL: '1s', AMBER_API_LISTEN: server, ...extraEnv },
  });
  let logs = '';
  child.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + 60_000;
  while (!logs.includes('"event":"started"')) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the agent did not start:\n${logs}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, logs: () => logs, exited, server };
}

/** Kills the agent if it still runs and waits for it. */
export async function stopAgentProcess(agent: RunningAgent | undefined, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (!agent || agent.child.exitCode !== null || agent.child.signalCode !== null) return;
  agent.child.kill(signal);
  await agent.exited;
}
