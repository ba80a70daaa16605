import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveSecret } from '../../src/incident/sinks/sink';
import { backoffMs, UploadQueue } from '../../src/incident/uploads';
import { recordingLogger, tempDataDir } from '../helpers/uploads';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function dataDir(): string {
  const d = tempDataDir();
  dirs.push(d);
  return d;
}

describe('upload queue', () => {
  it('backs off exponentially with jitter between half and all of the delay, up to maxMs', () => {
    const retry = { initialMs: 1000, maxMs: 10_000 };
    expect([1, 2, 3, 4, 5, 9].map((n) => backoffMs(n, retry, () => 0))).toEqual([500, 1000, 2000, 4000, 5000, 5000]);
    expect([1, 2, 3, 4, 5, 9].map((n) => backoffMs(n, retry, () => 1))).toEqual([1000, 2000, 4000, 8000, 10_000, 10_000]);
  });

  it('refuses bad input with clear errors and writes nothing', async () => {
    const data = dataDir();
    const queue = new UploadQueue({ dataDir: data, sinks: [], log: recordingLogger().log });
    const ok = { size: 1, sha256: 'a'.repeat(64) };
    await expect(queue.enqueue('../x', '/a.tar.gz', ok)).rejects.toThrow('bundle id "../x": not a valid bundle id');
    await expect(queue.enqueue('.hidden', '/a.tar.gz', ok)).rejects.toThrow('not a valid bundle id');
    await expect(queue.enqueue('inc-1', 'rel.tar.gz', ok)).rejects.toThrow('archive rel.tar.gz: not an absolute path');
    await expect(queue.enqueue('inc-1', '/a.tar.gz', { size: 1, sha256: 'A'.repeat(64) })).rejects.toThrow('sha256 must be 64 lowercase hex digits');
    await expect(queue.enqueue('inc-1', '/a.tar.gz', { size: -1, sha256: 'a'.repeat(64) })).rejects.toThrow('size -1 is not a byte count');
    expect(existsSync(path.join(data, 'incidents', '.uploads'))).toBe(false);
    await queue.enqueue('inc-1', '/a.tar.gz', ok);
    await queue.enqueue('inc-1', '/a.tar.gz', ok); // the same again: no-op
    await expect(queue.enqueue('inc-1', '/a.tar.gz', { size: 1, sha256: 'b'.repeat(64) })).rejects.toThrow(`bundle inc-1 is already queued with another archive (sha256 ${'a'.repeat(64)})`);
    expect(readdirSync(path.join(data, 'incidents', '.uploads'))).toEqual(['inc-1.json']);
    await queue.close();
    await expect(queue.enqueue('inc-2', '/a.tar.gz', ok)).rejects.toThrow('upload queue is closed');
    expect(() => new UploadQueue({ dataDir: data, sinks: [], log: recordingLogger().log, retry: { initialMs: 0 } })).toThrow('upload retry: initialMs must be above 0');
  });

  it('moves an unreadable state file aside on start, keeps the readable ones, drops leftovers of interrupted writes', async () => {
    const data = dataDir();
    const uploads = path.join(data, 'incidents', '.uploads');
    mkdirSync(uploads, { mode: 0o700 });
    const good = {
      id: 'inc-good',
      archive: '/x/inc-good.tar.gz',
      size: 5,
      sha256: 'c'.repeat(64),
      enqueuedAt: '2024-05-01T00:00:00.000Z',
      sinks: { gone: { pending: true, attempts: 2, lastError: 'x', lastAttemptAt: null, nextAttemptAt: null, uploadedAt: null, remote: null, failed: false } },
    };
    writeFileSync(path.join(uploads, 'inc-good.json'), JSON.stringify(good));
    writeFileSync(path.join(uploads, 'inc-bad.json'), '{"id": "inc-bad", "size": "many"');
    writeFileSync(path.join(uploads, 'inc-other.json'), JSON.stringify({ ...good, id: 'inc-else' }));
    writeFileSync(path.join(uploads, 'inc-good.json.tmp'), '{');
    const { log, lines } = recordingLogger();
    const queue = new UploadQueue({ dataDir: data, sinks: [], log });
    await queue.start();
    expect(queue.status('inc-good')).toEqual(good);
    expect(queue.isUploaded('inc-good')).toBe(false);
    expect(queue.status('inc-bad')).toBeNull();
    expect(readdirSync(uploads)).toEqual(['inc-good.json']);
    expect(readdirSync(path.join(data, 'quarantine')).sort()).toEqual(['inc-bad.json', 'inc-other.json']);
    expect(lines.filter((l) => l.msg === 'upload state unreadable: moved aside, its bundle is not uploaded').map((l) => path.basename(l.file as string)).sort()).toEqual([
      'inc-bad.json',
      'inc-other.json',
    ]);
    expect(lines.find((l) => l.msg === 'upload owed to sinks no longer configured: left pending')).toMatchObject({ id: 'inc-good', sinks: ['gone'] });
    await queue.close();
    expect(JSON.parse(readFileSync(path.join(uploads, 'inc-good.json'), 'utf8'))).toEqual(good);
  });
});

describe('secrets', () => {
  it('reads a secret inline, from a file (no trailing newline) or an env var, one source only; never blocks on a FIFO', async () => {
    const data = dataDir();
    const file = path.join(data, 'key');
    writeFileSync(file, 'file-secret\n');
    expect(await resolveSecret({ value: 'inline' }, 'k')).toBe('inline');
    expect(await resolveSecret({ file }, 'k')).toBe('file-secret');
    expect(await resolveSecret({ env: 'AMBER_X' }, 'k', { AMBER_X: 'env-secret' })).toBe('env-secret');
    expect(await resolveSecret({}, 'k')).toBeUndefined();
    await expect(resolveSecret({ env: 'AMBER_X' }, 'k', {})).rejects.toThrow('k: environment variable AMBER_X is not set');
    await expect(resolveSecret({ value: 'a', file }, 'k')).rejects.toThrow('k: give one of the value, a file or an environment variable name, not several');
    const fifo = path.join(data, 'fifo');
    execFileSync('mkfifo', [fifo]);
    await expect(resolveSecret({ file: fifo }, 'k')).rejects.toThrow(`k file ${fifo} is not a regular file`);
    await expect(resolveSecret({ file: path.join(data, 'none') }, 'k')).rejects.toThrow(`k file ${path.join(data, 'none')}: ENOENT`);
  });
});
