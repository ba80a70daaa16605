/**
 * The README's commands, as written: `npm start` (the agent with its
 * defaults; only its data dir comes from the environment, which the README
 * says overrides the defaults) and every line of the shell blocks the README
 * marks as run by this test, each through bash from the clone's root. Uses
 * the default socket, /run/amber/amber.sock: it fails loudly when an agent
 * already answers there rather than touch it. Needs root.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = path.resolve(__dirname, '../..');
const SOCKET = '/run/amber/amber.sock';
const MARK = '<!-- test/e2e/readme.test.ts runs this block as written';

/** The command lines of the marked ```sh blocks (comments after the command stripped). */
function markedCommands(): string[] {
  const lines = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8').split('\n');
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (!lines[i].startsWith(MARK)) continue;
    if (lines[i + 1] !== '```sh') throw new Error(`README.md:${i + 2}: a marked block must start with \`\`\`sh`);
    for (let j = i + 2; lines[j] !== '```'; j++) {
      const command = lines[j].replace(/\s+#.*$/, '').trim();
      if (command) out.push(command);
    }
  }
  return out;
}

function live(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket, () => {
      c.destroy();
      resolve(true);
    });
    c.on('error', () => resolve(false));
  });
}

function run(command: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-c', command], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('the README, as written', () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-readme-'));
  let agent: ChildProcess | undefined;
  let logs = '';

  beforeAll(async () => {
    if (await live(SOCKET)) throw new Error(`an agent already answers on ${SOCKET}: stop it to run this test (it is left alone)`);
    // its own process group, so that npm and the agent under it are stopped together, by that id
    agent = spawn('npm', ['start'], { cwd: ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, AMBER_DATA_DIR: dataDir } });
    agent.stdout!.on('data', (d: Buffer) => (logs += d.toString()));
    agent.stderr!.on('data', (d: Buffer) => (logs += d.toString()));
    const deadline = Date.now() + 180_000;
    while (!logs.includes('"event":"started"')) {
      if (agent.exitCode !== null || Date.now() > deadline) throw new Error(`npm start did not start the agent:\n${logs}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }, 200_000);

  afterAll(async () => {
    if (agent?.pid && agent.exitCode === null) {
      const exited = new Promise((r) => agent!.on('exit', r));
      process.kill(-agent.pid, 'SIGTERM');
      await exited;
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('npm start runs the agent with its defaults: the default socket, every event type', () => {
    expect(logs).toContain(`"api":["unix://${SOCKET}"]`);
    expect(logs).toContain('"types":["exec","exit","fork","open","connect","accept","dns"]');
  });

  it('runs every command of the marked blocks, each exiting 0 with its output', async () => {
    const commands = markedCommands();
    expect(commands).toEqual([
      'npx amber status',
      'npx amber trace exec --timeout 3s',
      'npx amber buffer query --type exec --since 5m --limit 5',
      'npx amber incidents list',
    ]);
    const results: Record<string, { code: number | null; stdout: string; stderr: string }> = {};
    for (const c of commands) results[c] = await run(c);
    for (const [c, r] of Object.entries(results)) expect(r.code, `${c}\n${r.stderr}`).toBe(0);
    expect(results['npx amber status'].stdout).toMatch(new RegExp(`^node +${os.hostname()}$`, 'm'));
    expect(results['npx amber trace exec --timeout 3s'].stdout.split('\n')[0]).toMatch(/^NAMESPACE +POD +CONTAINER +PID +COMM +TYPE +DETAILS/);
    // the commands above ran execs (npx, node, bash): the buffer has them
    expect(results['npx amber buffer query --type exec --since 5m --limit 5'].stdout.split('\n').filter(Boolean).length).toBeGreaterThan(1);
    expect(results['npx amber incidents list'].stdout.split('\n')[0]).toMatch(/^ID +STATE +CREATED +TRIGGER +CONTAINER +POD +SIZE +UPLOADS/);
  }, 120_000);
});
