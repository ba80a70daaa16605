/**
 * grepCore on core files built here byte by byte: matches across the 4 MiB
 * read chunks, at segment edges, overlapping ones, never across two segments,
 * names from NT_FILE and NT_PRPSINFO; and a hostile file is refused clearly.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CoreFormatError, formatHit, grepCore, hexdumpLines, type CoreHit } from '../../src/incident/core-grep';
import { writeCore } from '../helpers/core';

const CHUNK = 4 << 20;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-core-grep-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function grep(core: string, needle: string | Buffer, maxHits?: number): Promise<CoreHit[]> {
  const hits: CoreHit[] = [];
  for await (const hit of grepCore(core, needle, { maxHits, regions: [{ start: '0x7f0000000000', path: '[heap]' }] })) hits.push(hit);
  return hits;
}

describe('grepCore', () => {
  const needle = 'AMBER-NEEDLE-0123456789';
  const big = Buffer.alloc(CHUNK * 2 + 12345, 0x2e);
  const across = CHUNK - 7; // starts in the first chunk, ends in the second
  const acrossTwice = 2 * CHUNK - 1; // only its first byte is in the second chunk
  big.write(needle, 0);
  big.write(needle, across);
  big.write(needle, acrossTwice);
  big.write(needle, big.length - needle.length);
  const heap = Buffer.alloc(8192, 0);
  heap.write('AMBER-', 8192 - 6); // with the next segment's start it would read AMBER-NEEDLE…: not one match
  heap.write('xaaaax', 100);
  const tail = Buffer.alloc(4096, 0);
  tail.write('NEEDLE-0123456789', 0);
  const core = writeCore(path.join(dir, 'one.core'), [
    { vaddr: 0x400000n, data: big, flags: 5 },
    { vaddr: 0x7f0000000000n, data: heap, flags: 6 },
    { vaddr: 0x7f0000002000n, data: tail, flags: 6 },
  ]);

  it('finds every match, across chunk borders and at segment edges, with addresses, regions and names', async () => {
    const hits = await grep(core, needle);
    expect(hits.map((h) => h.address)).toEqual([0, across, acrossTwice, big.length - needle.length].map((o) => `0x${(0x400000 + o).toString(16)}`));
    expect(hits.map((h) => h.offset - hits[0].offset)).toEqual([0, across, acrossTwice, big.length - needle.length]);
    expect(hits[0]).toMatchObject({ pid: 4242, comm: 'victim', region: { start: '0x400000', end: `0x${(0x400000 + big.length).toString(16)}`, perms: 'r-x', path: '/usr/bin/victim' } });
    // never across two segments, even adjacent ones
    expect(await grep(core, 'AMBER-NEEDLE-0123456789'.slice(0, 12))).toHaveLength(4);
  });

  it('reports overlapping matches, names mappings from the maps, and stops at maxHits', async () => {
    const hits = await grep(core, 'aa');
    expect(hits.map((h) => [h.address, h.region.path, h.region.perms])).toEqual([
      ['0x7f0000000065', '[heap]', 'rw-'],
      ['0x7f0000000066', '[heap]', 'rw-'],
      ['0x7f0000000067', '[heap]', 'rw-'],
    ]);
    expect(await grep(core, 'aa', 2)).toHaveLength(2);
    expect(await grep(core, Buffer.from('xaaaax'))).toHaveLength(1);
  });

  it('shows the bytes around a hit like hexdump -C, by process address', async () => {
    const [hit] = await grep(core, 'xaaaax');
    expect(hit.excerpt).toEqual([
      '00007f0000000040  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|',
      '00007f0000000050  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|',
      '00007f0000000060  00 00 00 00 78 61 61 61  61 78 00 00 00 00 00 00  |....xaaaax......|',
      '00007f0000000070  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|',
      '00007f0000000080  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|',
    ]);
    expect(formatHit(hit).split('\n')[0]).toBe(`pid 4242 (victim) at 0x7f0000000064 in 0x7f0000000000-0x7f0000002000 rw- [heap], core offset ${hit.offset}`);
    expect(hexdumpLines(Buffer.from('ab'), 0x10n)).toEqual(['0000000000000010  61 62                                             |ab|']);
  });

  it('refuses what is not a core, and an empty search', async () => {
    const text = path.join(dir, 'text');
    fs.writeFileSync(text, 'hello, not an ELF file at all, but long enough for a header'.repeat(2));
    await expect(grep(text, 'x')).rejects.toThrow(new CoreFormatError('not an ELF file'));
    await expect(grep(core, '')).rejects.toThrow('the search text is empty');
    const truncated = path.join(dir, 'truncated.core');
    fs.writeFileSync(truncated, fs.readFileSync(core).subarray(0, 100));
    await expect(grep(truncated, 'x')).rejects.toThrow('4 program headers do not fit the file');
    const link = path.join(dir, 'link.core');
    fs.symlinkSync(core, link);
    await expect(grep(link, 'x')).rejects.toThrow(`${link} is a symbolic link, not a regular file`);
  });
});
