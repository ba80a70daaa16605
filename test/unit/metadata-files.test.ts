import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { processStartMs } from '../../src/containers/metadata';
import { readBoundedFile, readJsonIfExists, withTimeout } from '../../src/containers/metadata-files';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-mdfiles-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('bounded reads of state files', () => {
  it('reads a regular file and /proc files (size 0) up to EOF', async () => {
    fs.writeFileSync(path.join(tmp, 'pidfile'), '4242\n');
    expect(await readBoundedFile(path.join(tmp, 'pidfile'), 16)).toBe('4242\n');
    expect(await readBoundedFile('/proc/self/stat', 4096)).toMatch(new RegExp(`^${process.pid} \\(`));
  });

  it('refuses a FIFO at once (no writer: a blocking open would hang), a symlink, a directory and an oversized file', async () => {
    const fifo = path.join(tmp, 'ctl');
    execFileSync('mkfifo', [fifo]);
    await expect(readBoundedFile(fifo, 100)).rejects.toThrow(`${fifo} is not a regular file`);
    fs.writeFileSync(path.join(tmp, 'secret'), 'x');
    fs.symlinkSync(path.join(tmp, 'secret'), path.join(tmp, 'link'));
    await expect(readBoundedFile(path.join(tmp, 'link'), 100)).rejects.toMatchObject({ code: 'ELOOP' });
    await expect(readBoundedFile(tmp, 100)).rejects.toThrow('is not a regular file');
    fs.writeFileSync(path.join(tmp, 'big'), Buffer.alloc(1001, 0x61));
    await expect(readBoundedFile(path.join(tmp, 'big'), 1000)).rejects.toThrow('larger than 1000 bytes');
    expect((await readBoundedFile(path.join(tmp, 'big'), 1001)).length).toBe(1001);
  });

  it('parses JSON, undefined when absent, errors when malformed', async () => {
    fs.writeFileSync(path.join(tmp, 'c.json'), '{"a":1}');
    expect(await readJsonIfExists(path.join(tmp, 'c.json'), 100)).toEqual({ a: 1 });
    expect(await readJsonIfExists(path.join(tmp, 'none.json'), 100)).toBeUndefined();
    fs.writeFileSync(path.join(tmp, 'bad.json'), '{"a":');
    await expect(readJsonIfExists(path.join(tmp, 'bad.json'), 100)).rejects.toThrow(
      `${path.join(tmp, 'bad.json')}: not JSON: Unexpected end of JSON input`,
    );
  });

  it('times out a promise that never settles', async () => {
    await expect(withTimeout(new Promise(() => {}), 20, 'a hung socket')).rejects.toThrow('a hung socket: no answer within 20 ms');
    expect(await withTimeout(Promise.resolve(7), 20, 'x')).toBe(7);
  });

  it('computes a process start time from /proc/<pid>/stat and /proc/uptime, with spaces and ")" in comm', () => {
    const stat = '77 (a) b) S 1 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 12345 0 0';
    // booted 1000.25 s before now; started 123.45 s after boot
    expect(processStartMs(stat, '1000.25 1900.50\n', 1_700_000_000_000)).toBe(1_700_000_000_000 - 1_000_250 + 123_450);
    expect(() => processStartMs('77 a S', '1.0 1.0', 0)).toThrow('no comm field');
    expect(() => processStartMs(stat, '', 0)).toThrow('no start time');
    expect(() => processStartMs(stat, 'x y', 0)).toThrow('no start time');
    // this process: started before now, after boot, within the test run
    const now = Date.now();
    const self = processStartMs(fs.readFileSync('/proc/self/stat', 'utf8'), fs.readFileSync('/proc/uptime', 'utf8'), now);
    expect(self).toBeLessThanOrEqual(now + 20);
    expect(now - self).toBeLessThan(10 * 60_000);
  });

});
