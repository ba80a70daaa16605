/**
 * The CLI's output as users pipe it: the built CLI (dist/src/cli/main.js) in
 * real processes with real pipes. A reader that goes away ends the output
 * quietly; columns output never lets a stored field drive the terminal.
 */
import { execFile, spawn } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventBuffer } from '../../src/buffer';
import type { AmberEvent } from '../../src/sensor/events';
import { execEvent, KEEP_OLD, openEvent, sequenceEvents, T0, tempDir } from '../helpers/buffer-events';

const CLI = path.resolve(__dirname, '../../dist/src/cli/main.js');
const execFileP = promisify(execFile);

/** Runs a bash pipeline; returns the exit code of each command, stdout and stderr. */
function pipeline(script: string): Promise<{ codes: number[]; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-c', `${script}; echo "codes \${PIPESTATUS[*]}" >&2`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', () => {
      const m = /^codes ([\d ]+)$/m.exec(stderr);
      resolve({ codes: m ? m[1].split(' ').map(Number) : [], stdout, stderr: stderr.replace(/^codes .*\n/m, '') });
    });
  });
}

let dir: string;
let cleanup: () => Promise<void>;
const many = sequenceEvents(0, 20_000);

/** Planted fields a damaged or hostile data dir can hold: a type, pid and comm that are strings full of escapes. */
const planted = [
  { ...openEvent(T0 + 1e9), type: 'open\u009b31m', pid: '7\u202e42', comm: 'c\u001b]0;x\u0007' },
  execEvent(T0 + 2e9, { comm: 'del\u007f', exePath: '/tmp/a\u2066b\u2069', filename: '/tmp/x', args: ['a\u200eb', 'c\u061cd', 'e\u009bf', 'g\u2028h'] }),
  openEvent(T0 + 3e9, { path: '/tmp/rlo\u202egpj.exe', flagNames: ['O_RDONLY\u001b[2J'] }),
] as unknown as AmberEvent[];

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  const buffer = await EventBuffer.open({ dataDir: dir, ...KEEP_OLD });
  buffer.append(many);
  buffer.append(planted);
  await buffer.close();
});
afterAll(async () => {
  await cleanup();
});

describe('a reader that goes away', () => {
  it('amber buffer query | head -2: two lines, exit 0, no stack trace', async () => {
    const run = await pipeline(`node ${CLI} buffer query --data-dir ${dir} -o json | head -2`);
    expect(run.codes).toEqual([0, 0]);
    const lines = run.stdout.split('\n');
    expect(lines).toHaveLength(3);
    expect(lines[2]).toBe('');
    expect(lines.slice(0, 2).map((l) => JSON.parse(l) as unknown)).toEqual(many.slice(0, 2));
    expect(run.stderr).toBe('');
  });

  it('amber buffer stats | true: exit 0, no stack trace', async () => {
    for (const output of ['text', 'json']) {
      const run = await pipeline(`node ${CLI} buffer stats --data-dir ${dir} -o ${output} | true`);
      expect(run.codes).toEqual([0, 0]);
      expect(run.stderr).toBe('');
    }
  });

  it('amber --help | true and a usage error into a closed pipe: no stack trace', async () => {
    const help = await pipeline(`node ${CLI} --help | true`);
    expect(help.codes).toEqual([0, 0]);
    expect(help.stderr).toBe('');
    const usage = await pipeline(`node ${CLI} buffer query --limit x 2>&1 | true`);
    expect(usage.codes).toEqual([2, 0]);
  });
});

describe('columns output', () => {
  it('escapes C0, DEL, C1 and bidi controls in every field, stored ones included', async () => {
    const { stdout } = await execFileP(process.execPath, [CLI, 'buffer', 'query', '--data-dir', dir, '--since', String(T0 + 1e9)]);
    const lines = stdout.split('\n');
    expect(lines).toHaveLength(5); // header, three events, ''
    expect(stdout).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/);
    expect(lines[1]).toContain('7\\u202e42');
    expect(lines[1]).toContain('c\\x1b]0;x\\x07');
    expect(lines[1]).toContain('open\\x9b31m');
    expect(lines[3]).toContain('/tmp/rlo\\u202egpj.exe  O_RDONLY\\x1b[2J  fd 3');
    expect(lines[2]).toContain('del\\x7f');
    expect(lines[2]).toContain('/tmp/a\\u2066b\\u2069 (as /tmp/x)');
    expect(lines[2]).toContain('"a\\u200eb" "c\\u061cd" "e\\x9bf" "g\\u2028h"');
  });

  it('-o json keeps the stored bytes exactly (escaped as JSON only)', async () => {
    const { stdout } = await execFileP(process.execPath, [CLI, 'buffer', 'query', '--data-dir', dir, '--since', String(T0 + 1e9), '-o', 'json']);
    // the stored order of keys is the buffer's; the values are the planted ones, escapes kept
    expect(stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as unknown)).toEqual(planted);
    expect(stdout).toContain('"pid":"7\u202e42"');
  });
});
