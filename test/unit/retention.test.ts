import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { enforceRetention, retainedBundles } from '../../src/incident/retention';
import { recordingLogger } from '../helpers/uploads';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function dataDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'amber-retention-'));
  dirs.push(d);
  mkdirSync(path.join(d, 'incidents'), { mode: 0o700 });
  return d;
}

/** A bundle: its directory (manifest + events of `eventBytes`) and its archive of `archiveBytes`; returns its total bytes. */
function bundle(data: string, id: string, createdAt: string, eventBytes: number, archiveBytes: number): number {
  const dir = path.join(data, 'incidents', id);
  mkdirSync(path.join(dir, 'memory'), { recursive: true });
  const manifest = JSON.stringify({ version: 1, id, createdAt });
  writeFileSync(path.join(dir, 'manifest.json'), manifest);
  writeFileSync(path.join(dir, 'memory', '1.core'), Buffer.alloc(eventBytes, 1));
  writeFileSync(path.join(data, 'incidents', `${id}.tar.gz`), Buffer.alloc(archiveBytes, 2));
  return Buffer.byteLength(manifest) + eventBytes + archiveBytes;
}

function seed(data: string) {
  return {
    // created out of name order: age comes from the manifest
    b: bundle(data, 'inc-b', '2024-05-01T10:00:00Z', 1000, 500),
    a: bundle(data, 'inc-a', '2024-05-01T11:00:00Z', 2000, 700),
    d: bundle(data, 'inc-d', '2024-05-01T12:00:00Z', 3000, 900),
    c: bundle(data, 'inc-c', '2024-05-01T13:00:00Z', 4000, 1100),
  };
}

describe('incident retention', () => {
  it('lists bundles oldest first by their manifest, with their bytes', async () => {
    const data = dataDir();
    const size = seed(data);
    mkdirSync(path.join(data, 'incidents', '.uploads'));
    const list = await retainedBundles(data);
    expect(list.map((b) => [b.id, b.bytes, b.createdAt])).toEqual([
      ['inc-b', size.b, Date.parse('2024-05-01T10:00:00Z')],
      ['inc-a', size.a, Date.parse('2024-05-01T11:00:00Z')],
      ['inc-d', size.d, Date.parse('2024-05-01T12:00:00Z')],
      ['inc-c', size.c, Date.parse('2024-05-01T13:00:00Z')],
    ]);
  });

  it('removes the oldest beyond maxCount, directory and archive', async () => {
    const data = dataDir();
    const size = seed(data);
    const { log, lines } = recordingLogger();
    const r = await enforceRetention(data, { maxCount: 2, log }, null);
    expect(r).toEqual({ removed: ['inc-b', 'inc-a'], kept: [], bundles: 2, bytes: size.d + size.c });
    expect(readdirSync(path.join(data, 'incidents')).sort()).toEqual(['inc-c', 'inc-c.tar.gz', 'inc-d', 'inc-d.tar.gz']);
    expect(lines.filter((l) => l.msg === 'incident bundle removed (retention)').map((l) => [l.id, l.bytes])).toEqual([
      ['inc-b', size.b],
      ['inc-a', size.a],
    ]);
  });

  it('removes the oldest until the bundles fit in maxBytes', async () => {
    const data = dataDir();
    const size = seed(data);
    const { log } = recordingLogger();
    // one byte less than the three newest: the two oldest go
    const r = await enforceRetention(data, { maxBytes: size.a + size.d + size.c - 1, log }, null);
    expect(r.removed).toEqual(['inc-b', 'inc-a']);
    expect(r.bytes).toBe(size.d + size.c);
    // within bounds: nothing to do
    expect(await enforceRetention(data, { maxBytes: size.d + size.c, maxCount: 2, log }, null)).toEqual({ removed: [], kept: [], bundles: 2, bytes: size.d + size.c });
  });

  it('keeps a bundle not yet uploaded (and one being captured), removing the next oldest instead', async () => {
    const data = dataDir();
    const size = seed(data);
    const { log, lines } = recordingLogger();
    const uploaded = new Set(['inc-a', 'inc-d', 'inc-c']);
    const forgotten: string[] = [];
    const state = { isUploaded: (id: string) => uploaded.has(id), forget: async (id: string) => void forgotten.push(id) };
    const r = await enforceRetention(data, { maxCount: 1, log, inProgress: new Set(['inc-c']) }, state);
    expect(r).toEqual({ removed: ['inc-a', 'inc-d'], kept: ['inc-b', 'inc-c'], bundles: 2, bytes: size.b + size.c });
    expect(forgotten).toEqual(['inc-a', 'inc-d']);
    expect(existsSync(path.join(data, 'incidents', 'inc-b.tar.gz'))).toBe(true);
    expect(lines.filter((l) => l.msg === 'incident bundle beyond the retention bounds kept').map((l) => [l.id, l.reason])).toEqual([
      ['inc-b', 'not yet uploaded'],
      ['inc-c', 'being captured'],
    ]);
    expect(lines.find((l) => l.msg === 'incident bundles still beyond the retention bounds')).toMatchObject({ kept: ['inc-b', 'inc-c'], bundles: 2, maxCount: 1 });
  });

  it('never follows links: a linked "bundle" is not one, a link inside a bundle goes without its target', async () => {
    const data = dataDir();
    const outside = mkdtempSync(path.join(os.tmpdir(), 'amber-retention-outside-'));
    dirs.push(outside);
    writeFileSync(path.join(outside, 'precious'), 'keep me');
    symlinkSync(outside, path.join(data, 'incidents', 'inc-link'));
    symlinkSync(path.join(outside, 'precious'), path.join(data, 'incidents', 'inc-link2.tar.gz'));
    bundle(data, 'inc-old', '2024-01-01T00:00:00Z', 10, 10);
    symlinkSync(outside, path.join(data, 'incidents', 'inc-old', 'evil'));
    const { log } = recordingLogger();
    const r = await enforceRetention(data, { maxCount: 0, log }, null);
    expect(r.removed).toEqual(['inc-old']);
    expect(readdirSync(path.join(data, 'incidents')).sort()).toEqual(['inc-link', 'inc-link2.tar.gz']);
    expect(readdirSync(outside)).toEqual(['precious']);
  });
});
