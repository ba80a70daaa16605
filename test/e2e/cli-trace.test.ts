/** `amber trace --local` as a user runs it: the built CLI, real kernel, a real container. */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AmberEvent } from '../../src/sensor/events';
import { startContainer, uniqueName, type Container } from '../helpers/podman';

const CLI = path.resolve(__dirname, '../../dist/src/cli/main.js');

interface Run {
  pid: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI; `during` runs once it says it is tracing. */
function amber(args: string[], during?: () => Promise<unknown>, prefix: string[] = []): Promise<Run> {
  return new Promise((resolve, reject) => {
    const [cmd, ...pre] = prefix.length ? prefix : [process.execPath];
    const child = spawn(cmd, [...pre, ...(prefix.length ? [process.execPath] : []), CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let started = false;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (!started && stderr.includes('amber: tracing') && during) {
        started = true;
        during().catch(reject);
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ pid: child.pid!, code, stdout, stderr }));
  });
}

describe('amber trace --local', () => {
  let container: Container;
  let containerName: string;

  beforeAll(async () => {
    containerName = uniqueName('amber-e2e-cli');
    container = await startContainer(containerName);
  });
  afterAll(async () => {
    await container?.remove();
  });

  it('streams JSON lines of a container with its ID, then prints the drop counters', async () => {
    const run = await amber(['trace', 'all', '--local', '-o', 'json', '--timeout', '4s'], () =>
      container.exec('/bin/sh', '-c', 'echo amber-cli > /tmp/amber-cli.txt'),
    );
    expect(run.code).toBe(0);
    const events = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as AmberEvent);
    const exec = events.find((e) => e.type === 'exec' && e.containerId === container.id && e.args.join(' ') === '/bin/sh -c echo amber-cli > /tmp/amber-cli.txt');
    expect(exec).toMatchObject({ filename: '/bin/sh', exePath: '/bin/busybox', upperLayer: false });
    const open = events.find((e) => e.type === 'open' && e.containerId === container.id && e.path === '/tmp/amber-cli.txt');
    expect(open).toMatchObject({ flagNames: ['O_WRONLY', 'O_CREAT', 'O_TRUNC'] });
    // the CLI does not record itself
    expect(events.filter((e) => e.pid === run.pid)).toEqual([]);
    expect(run.stderr).toMatch(new RegExp(`^amber: \\d+ events, ${events.length} written; drops: exec=0 exit=0 fork=0 open=0 connect=0 accept=0 dns=0$`, 'm'));
  });

  it('shows a table filtered to one container by ID prefix', async () => {
    const prefix = container.id.slice(0, 12);
    const run = await amber(['trace', 'exec', '--local', '--container', prefix, '--timeout', '3s'], () =>
      container.exec('/bin/sh', '-c', 'true'),
    );
    expect(run.code).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines[0]).toBe('NAMESPACE     POD                   CONTAINER             PID  COMM              TYPE     DETAILS');
    expect(lines.length).toBeGreaterThan(1);
    // a podman container: no namespace or pod, its name (learned when the trace started) in CONTAINER
    for (const line of lines.slice(1)) expect(line).toMatch(new RegExp(`^ {36}${containerName} +\\d+  \\S+ +exec     `));
    expect(lines.some((l) => l.includes('/bin/busybox (as /bin/sh)  /bin/sh -c true'))).toBe(true);
  });

  it('names the missing capabilities when not privileged', async () => {
    const run = await amber(['trace', 'exec', '--local', '--timeout', '1s'], undefined, [
      'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--',
    ]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('amber: the sensor needs capabilities it does not have: CAP_BPF (or CAP_SYS_ADMIN), CAP_PERFMON (or CAP_SYS_ADMIN)');
  });

  it('stops quietly when the reader goes away (| head -2) and still prints its counters', async () => {
    // events to trace: this process opens a file every 10 ms
    const opener = setInterval(() => fs.closeSync(fs.openSync(__filename, 'r')), 10);
    const started = Date.now();
    try {
      const run = await new Promise<{ codes: number[]; stdout: string; stderr: string }>((resolve, reject) => {
        const child = spawn('bash', ['-c', `node ${CLI} trace open --local -o json --pid ${process.pid} --timeout 60s | head -2; echo "codes \${PIPESTATUS[*]}" >&2`], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('error', reject);
        child.on('exit', () => resolve({ codes: /^codes ([\d ]+)$/m.exec(stderr)![1].split(' ').map(Number), stdout, stderr }));
      });
      expect(run.codes).toEqual([0, 0]);
      expect(Date.now() - started).toBeLessThan(30_000); // well before --timeout: it noticed the closed pipe
      const lines = run.stdout.split('\n');
      expect(lines).toHaveLength(3);
      for (const l of lines.slice(0, 2)) expect(JSON.parse(l) as AmberEvent).toMatchObject({ type: 'open', pid: process.pid, path: __filename });
      expect(run.stderr).toMatch(/^amber: \d+ events, \d+ written; drops: exec=0 exit=0 fork=0 open=\d+ connect=0 accept=0 dns=0$/m);
      expect(run.stderr).not.toMatch(/EPIPE|Error|at /);
    } finally {
      clearInterval(opener);
    }
  });

  it.each([
    ['30d', '--timeout must be 1ms to 24d, got "30d"'],
    ['0s', '--timeout must be 1ms to 24d, got "0s"'],
    ['garbage', '--timeout: invalid duration "garbage"'],
  ])('refuses --timeout %s as a usage error (exit 2)', async (value, message) => {
    const run = await amber(['trace', 'all', '--local', '--timeout', value]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain(message);
    expect(run.stdout).toBe('');
  });

  it('refuses --dns-timeout outside its range as a usage error', async () => {
    const run = await amber(['trace', 'dns', '--local', '--dns-timeout', '30d']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('--dns-timeout must be 100ms to 10m, got "30d"');
  });

  it('rejects an unknown event type with a usage error', async () => {
    const run = await amber(['trace', 'files', '--local']);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain('unknown event type "files"');
  });
});
