/**
 * The pax tar writer and reader, checked against each other and against GNU
 * tar and Python's tarfile: names kept byte for byte (long, newline,
 * non-UTF-8), ns mtimes, large ids, symlinks stored and never followed, hard
 * links, a 10 GiB sparse file that stays small and extracts with its holes,
 * packDirectory's sorted .tar.gz, and damaged archives refused.
 */
import { execFileSync } from 'node:child_process';
import fs, { closeSync, createReadStream, fstatSync, openSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { escapeName, planFile, packDirectory, readTar, TarFormatError, TarWriter, unescapeName, type TarEntry, type TarHeader } from '../../src/incident/tar';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-tar-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const MTIME = 1_700_000_000_123_456_789n;
const header = (name: string | Buffer, extra: Partial<TarHeader> = {}): TarHeader => ({
  name: Buffer.isBuffer(name) ? name : Buffer.from(name),
  mode: 0o644,
  uid: 0,
  gid: 0,
  mtimeNs: MTIME,
  ...extra,
});

async function writeTar(file: string, fill: (w: TarWriter) => Promise<void>): Promise<number> {
  const fh = await fs.promises.open(file, 'wx');
  try {
    const w = new TarWriter(fh);
    await fill(w);
    const bytes = await w.finish();
    expect(bytes).toBe((await fh.stat()).size);
    return bytes;
  } finally {
    await fh.close();
  }
}

interface ReadEntry extends Omit<TarEntry, 'data' | 'buffer'> {
  content: Buffer | null;
}

async function readAll(input: AsyncIterable<Buffer>): Promise<ReadEntry[]> {
  const out: ReadEntry[] = [];
  for await (const e of readTar(input)) {
    const content = e.type === 'file' ? await e.buffer() : null;
    const { data: _d, buffer: _b, ...rest } = e;
    out.push({ ...rest, content });
  }
  return out;
}

/** GNU tar (C locale: every non-ASCII byte escaped), its stderr kept apart from its output. */
function gnuTar(...args: string[]): string {
  return execFileSync('tar', args, { encoding: 'latin1', env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** GNU tar's listing of names, escaped (\n, \ooo), one a line. */
function gnuNames(archive: string, ...flags: string[]): string[] {
  return gnuTar('-t', ...flags, '--quoting-style=escape', '-f', archive).split('\n').filter(Boolean);
}

/** The escape quoting style GNU tar uses, for raw name bytes. */
function gnuEscape(name: Buffer): string {
  let s = '';
  for (const c of name) {
    if (c === 0x0a) s += '\\n';
    else if (c === 0x5c) s += '\\\\';
    else if (c < 0x20 || c > 0x7e) s += `\\${c.toString(8).padStart(3, '0')}`;
    else s += String.fromCharCode(c);
  }
  return s;
}

/** Python tarfile's names, as hex of the raw bytes. */
function pythonNames(archive: string): string[] {
  const script =
    'import sys, tarfile\n' +
    "for m in tarfile.open(sys.argv[1], encoding='utf-8', errors='surrogateescape'):\n" +
    "    print(m.name.encode('utf-8', 'surrogateescape').hex(), m.size, m.type.decode(), m.linkname.encode('utf-8', 'surrogateescape').hex())\n";
  return execFileSync('python3', ['-c', script, archive], { encoding: 'utf8' }).split('\n').filter(Boolean);
}

describe('tar writer and reader', () => {
  const NEWLINE = Buffer.from('dir/two\nlines');
  const LATIN1 = Buffer.from([0x64, 0x69, 0x72, 0x2f, 0xe9, 0xff, 0x2e, 0x62, 0x69, 0x6e]); // "dir/\xe9\xff.bin": not UTF-8
  const UTF8 = Buffer.from('dir/caf\u00e9-\u{1f600}');
  const LONG = Buffer.from(`dir/${'deep/'.repeat(40)}${'n'.repeat(200)}`);
  const SPLIT = Buffer.from(`dir/${'p'.repeat(120)}/${'x'.repeat(90)}`); // fits ustar's prefix + name

  it('keeps names byte for byte, mtimes to the ns and large ids, in its reader, GNU tar and Python', async () => {
    const archive = path.join(dir, 'names.tar');
    const files: Array<[Buffer, Buffer]> = [
      [NEWLINE, Buffer.from('newline\n')],
      [LATIN1, Buffer.from('latin1')],
      [UTF8, Buffer.from('utf8')],
      [LONG, Buffer.from('long')],
      [SPLIT, Buffer.from('split')],
      [Buffer.from('dir/plain'), Buffer.alloc(513, 7)],
    ];
    await writeTar(archive, async (w) => {
      await w.directory(header('dir', { mode: 0o755 }));
      for (const [name, data] of files) await w.buffer(header(name, { uid: 100_000_000, gid: 5, mode: 0o640 }), data);
      await w.symlink(header('dir/link-latin1', { mode: 0o777 }), LATIN1.subarray(4));
      await w.symlink(header(Buffer.from('dir/link\nnl'), { mode: 0o777 }), Buffer.from(`/${'t'.repeat(150)}\n`));
    });

    const entries = await readAll(createReadStream(archive));
    expect(entries.map((e) => e.name)).toEqual([Buffer.from('dir'), ...files.map(([n]) => n), Buffer.from('dir/link-latin1'), Buffer.from('dir/link\nnl')]);
    expect(entries[0]).toMatchObject({ type: 'directory', mode: 0o755, mtimeNs: MTIME, content: null });
    for (let i = 0; i < files.length; i++) {
      expect(entries[i + 1]).toMatchObject({ type: 'file', mode: 0o640, uid: 100_000_000, gid: 5, mtimeNs: MTIME, size: files[i][1].length, sparse: null });
      expect(entries[i + 1].content).toEqual(files[i][1]);
    }
    expect(entries[7]).toMatchObject({ type: 'symlink', linkname: LATIN1.subarray(4), size: 0 });
    expect(entries[8]).toMatchObject({ type: 'symlink', linkname: Buffer.from(`/${'t'.repeat(150)}\n`) });
    // the non-UTF-8 name is marked binary, the newline one needs a pax path (no hdrcharset: it is UTF-8)
    expect(entries[2].pax.get('hdrcharset')).toEqual(Buffer.from('BINARY'));
    expect(entries[1].pax.get('path')).toEqual(NEWLINE);
    expect(entries[1].pax.has('hdrcharset')).toBe(false);
    expect(entries[5].pax.has('path')).toBe(false);

    const expectedNames = entries.map((e) => gnuEscape(e.type === 'directory' ? Buffer.concat([e.name, Buffer.from('/')]) : e.name));
    expect(gnuNames(archive)).toEqual(expectedNames);
    const verbose = gnuTar('-tv', '--numeric-owner', '--full-time', '-f', archive);
    expect(verbose).toContain('100000000/5');
    expect(verbose).toContain('2023-11-14 22:13:20.123456789');

    const py = pythonNames(archive);
    expect(py.map((l) => l.split(' ')[0])).toEqual(entries.map((e) => e.name.toString('hex')));
    expect(py[7].split(' ').slice(2)).toEqual(['2', LATIN1.subarray(4).toString('hex')]);

    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    gnuTar('-x', '-f', archive, '-C', out);
    for (const [name, data] of files) {
      const file = Buffer.concat([Buffer.from(`${out}/`), name]);
      expect(fs.readFileSync(file)).toEqual(data);
      expect(fs.statSync(file, { bigint: true }).mtimeNs).toBe(MTIME);
    }
    expect(fs.readlinkSync(Buffer.from(`${out}/dir/link-latin1`), { encoding: 'buffer' })).toEqual(LATIN1.subarray(4));
    expect(fs.readdirSync(`${out}/dir`, { encoding: 'buffer' }).map((b) => b.toString('hex')).sort()).toEqual(
      [NEWLINE, LATIN1, UTF8, Buffer.from('dir/plain'), Buffer.from('dir/link-latin1'), Buffer.from('dir/link\nnl'), Buffer.from('dir/deep'), Buffer.from(`dir/${'p'.repeat(120)}`)]
        .map((b) => b.subarray(4).toString('hex'))
        .sort(),
    );
  });

  it('stores a symlink as a symlink: the marker in its target file never reaches the archive', async () => {
    const marker = `AMBER-MARKER-${process.pid}-${Date.now()}`;
    const secret = path.join(dir, 'secret');
    fs.writeFileSync(secret, marker);
    fs.symlinkSync(secret, path.join(dir, 'link'));
    const archive = path.join(dir, 'link.tar');
    await writeTar(archive, async (w) => {
      const st = fs.lstatSync(path.join(dir, 'link'), { bigint: true });
      expect(st.isSymbolicLink()).toBe(true);
      await w.symlink(header('link', { mtimeNs: st.mtimeNs, mode: 0o777 }), fs.readlinkSync(path.join(dir, 'link'), { encoding: 'buffer' }));
    });
    expect(fs.readFileSync(archive).includes(marker)).toBe(false);
    const [entry] = await readAll(createReadStream(archive));
    expect(entry).toMatchObject({ type: 'symlink', name: Buffer.from('link'), linkname: Buffer.from(secret) });
    expect(gnuTar('-tvf', archive)).toMatch(new RegExp(`^lrwxrwxrwx .* link -> ${secret}\\n$`));
  });

  it('stores hard links once', async () => {
    const archive = path.join(dir, 'hard.tar');
    await writeTar(archive, async (w) => {
      await w.buffer(header('a'), Buffer.from('shared'));
      await w.hardlink(header('b'), Buffer.from('a'));
    });
    const entries = await readAll(createReadStream(archive));
    expect(entries.map((e) => [e.type, e.name.toString(), e.linkname?.toString() ?? null, e.content?.toString() ?? null])).toEqual([
      ['file', 'a', null, 'shared'],
      ['hardlink', 'b', 'a', null],
    ]);
    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    gnuTar('-x', '-f', archive, '-C', out);
    expect(fs.statSync(path.join(out, 'b')).ino).toBe(fs.statSync(path.join(out, 'a')).ino);
    expect(fs.readFileSync(path.join(out, 'b'), 'utf8')).toBe('shared');
  });

  it('keeps a 10 GiB sparse file sparse: a small archive, and GNU tar extracts the same holes and data', async () => {
    const sparse = path.join(dir, 'sparse');
    const GIB = 1024 ** 3;
    fs.closeSync(fs.openSync(sparse, 'wx'));
    fs.truncateSync(sparse, 10 * GIB);
    const places: Array<[number, Buffer]> = [
      [4096, Buffer.alloc(8192, 'a')],
      [5 * GIB, Buffer.from('middle of the file')],
      [10 * GIB - 4096, Buffer.alloc(4096, 'z')],
    ];
    const fd = openSync(sparse, 'r+');
    for (const [at, data] of places) fs.writeSync(fd, data, 0, data.length, at);
    fs.fsyncSync(fd);
    const plan = planFile(fd, Number(fstatSync(fd).size));
    expect(plan).toMatchObject({ size: 10 * GIB, sparse: true, truncated: false });
    expect(plan.segments).toEqual([
      { offset: 4096, size: 8192 },
      { offset: 5 * GIB, size: 4096 },
      { offset: 10 * GIB - 4096, size: 4096 },
    ]);
    // a file that is all hole: no data, its size kept by the map's last (empty) segment
    const holes = path.join(dir, 'holes');
    fs.closeSync(fs.openSync(holes, 'wx'));
    fs.truncateSync(holes, GIB);
    const holesFd = openSync(holes, 'r');
    const holesPlan = planFile(holesFd, GIB);
    expect(holesPlan).toEqual({ size: GIB, segments: [{ offset: GIB, size: 0 }], dataBytes: 0, sparse: true, storedBytes: 512, truncated: false });
    const archive = path.join(dir, 'sparse.tar');
    const bytes = await writeTar(archive, async (w) => {
      expect(await w.file(header('big/sparse'), fd, plan)).toEqual({ changed: false });
      await w.file(header('big/holes'), holesFd, holesPlan);
    });
    closeSync(fd);
    closeSync(holesFd);
    expect(bytes).toBeLessThan(64 * 1024);

    const [entry, allHoles] = await readAll(createReadStream(archive));
    expect(allHoles).toMatchObject({ name: Buffer.from('big/holes'), size: GIB, sparse: [{ offset: GIB, size: 0 }], dataBytes: 0, content: Buffer.alloc(0) });
    expect(entry).toMatchObject({ name: Buffer.from('big/sparse'), type: 'file', size: 10 * GIB, sparse: plan.segments, dataBytes: 16384 });
    expect(entry.content!.subarray(0, 8192)).toEqual(places[0][1]);
    expect(entry.content!.subarray(8192, 8192 + 18).toString()).toBe('middle of the file');
    expect(entry.pax.get('GNU.sparse.realsize')?.toString()).toBe(String(10 * GIB));

    expect(gnuTar('-tvf', archive)).toMatch(/ 10737418240 .* big\/sparse\n.* 1073741824 .* big\/holes\n$/);
    const out = path.join(dir, 'out');
    fs.mkdirSync(out);
    gnuTar('-x', '-f', archive, '-C', out);
    expect(fs.statSync(path.join(out, 'big/holes'))).toMatchObject({ size: GIB, blocks: 0 });
    const copy = path.join(out, 'big/sparse');
    expect(fs.statSync(copy).size).toBe(10 * GIB);
    expect(fs.statSync(copy).blocks * 512).toBeLessThan(1 << 20);
    const copyFd = openSync(copy, 'r');
    try {
      // the same data map, and the same bytes in it: the rest are holes (zeros) in both
      expect(planFile(copyFd, 10 * GIB).segments).toEqual(plan.segments);
      for (const [at, data] of places) {
        const back = Buffer.alloc(data.length);
        fs.readSync(copyFd, back, 0, back.length, at);
        expect(back).toEqual(data);
      }
    } finally {
      closeSync(copyFd);
    }
    // Python reads the same map
    const py = execFileSync('python3', ['-c', 'import sys,tarfile\nfor m in tarfile.open(sys.argv[1]): print(m.name, m.size, m.sparse)', archive], { encoding: 'utf8' });
    expect(py).toBe(`big/sparse ${10 * GIB} [(4096, 8192), (${5 * GIB}, 4096), (${10 * GIB - 4096}, 4096)]\nbig/holes ${GIB} [(${GIB}, 0)]\n`);
  });

  it('caps a file at maxDataBytes: the entry ends where the kept data ends', async () => {
    const file = path.join(dir, 'f');
    fs.writeFileSync(file, Buffer.alloc(10_000, 'q'));
    const fd = openSync(file, 'r');
    const plan = planFile(fd, 10_000, { maxDataBytes: 3000 });
    expect(plan).toMatchObject({ size: 3000, dataBytes: 3000, sparse: false, truncated: true });
    const archive = path.join(dir, 'cap.tar');
    await writeTar(archive, (w) => w.file(header('f'), fd, plan).then(() => undefined));
    closeSync(fd);
    const [entry] = await readAll(createReadStream(archive));
    expect(entry.content).toEqual(Buffer.alloc(3000, 'q'));
  });

  it('ends a file that shrank while being read with zeros, and says so', async () => {
    const file = path.join(dir, 'f');
    fs.writeFileSync(file, Buffer.alloc(5000, 'w'));
    const fd = openSync(file, 'r+');
    const plan = planFile(fd, 5000);
    fs.ftruncateSync(fd, 1000);
    const archive = path.join(dir, 'shrank.tar');
    await writeTar(archive, async (w) => expect(await w.file(header('f'), fd, plan)).toEqual({ changed: true }));
    closeSync(fd);
    const [entry] = await readAll(createReadStream(archive));
    expect(entry.content).toEqual(Buffer.concat([Buffer.alloc(1000, 'w'), Buffer.alloc(4000)]));
  });

  it('rejects when its output stream fails, and does not wait for a drain that never comes', async () => {
    let taken = 0;
    const out = new Writable({
      highWaterMark: 1024,
      write(chunk: Buffer, _enc, done) {
        taken += chunk.length;
        // the first writes are slow (the writer has to wait for drain), then the "disk" fails
        setTimeout(() => done(taken > 8192 ? Object.assign(new Error('no space left'), { code: 'ENOSPC' }) : undefined), 5);
      },
    });
    out.on('error', () => {});
    const w = new TarWriter(out);
    await expect(w.buffer(header('big'), Buffer.alloc(1 << 20, 1))).rejects.toThrow('no space left');
    await expect(w.buffer(header('more'), Buffer.alloc(10))).rejects.toThrow('no space left');

    // closed under the writer without an error (a consumer gone): no 'drain', no 'error', only 'close'
    const closing = new Writable({
      highWaterMark: 1024,
      write(_chunk: Buffer, _enc, done) {
        setTimeout(() => closing.destroy(), 5);
        void done;
      },
    });
    await expect(new TarWriter(closing).buffer(header('big'), Buffer.alloc(1 << 20, 1))).rejects.toThrow('the output stream closed');
  });

  it('refuses damaged archives with a TarFormatError naming the place', async () => {
    const archive = path.join(dir, 'ok.tar');
    await writeTar(archive, (w) => w.buffer(header('a', { mtimeNs: 1_700_000_000n * 1_000_000_000n }), Buffer.alloc(2000, 1)));
    const good = fs.readFileSync(archive);
    const drain = async (b: Buffer) => {
      for await (const e of readTar([b])) await e.buffer();
    };
    await expect(drain(good)).resolves.toBeUndefined();
    await expect(drain(good.subarray(0, 1024))).rejects.toThrow(/truncated in entry data at byte 1024/);
    await expect(drain(good.subarray(0, 512 + 2048))).rejects.toThrow(/ends at byte 2560 without the end-of-archive blocks/);
    const flipped = Buffer.from(good);
    flipped[10] ^= 1;
    await expect(drain(flipped)).rejects.toThrow(TarFormatError);
    await expect(drain(flipped)).rejects.toThrow(/header at byte 0: bad checksum/);
  });
});

describe('packDirectory', () => {
  it('packs a bundle dir into a sorted .tar.gz under a prefix, created owner-only', async () => {
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(path.join(bundle, 'memory'), { recursive: true });
    fs.mkdirSync(path.join(bundle, 'executable'));
    fs.writeFileSync(path.join(bundle, 'manifest.json'), '{"version":1}');
    fs.writeFileSync(path.join(bundle, 'memory/12.core'), Buffer.alloc(3000, 'c'));
    fs.writeFileSync(path.join(bundle, 'executable/12.exe'), 'ELF');
    fs.writeFileSync(path.join(bundle, 'events.jsonl'), '{}\n');
    const archive = path.join(dir, 'incident-1.tar.gz');
    const result = await packDirectory(bundle, archive, { gzip: true, prefix: 'incident-1' });
    expect(result).toEqual({ entries: 7, bytes: fs.statSync(archive).size });
    expect(fs.statSync(archive).mode & 0o777).toBe(0o600);
    const entries = await readAll(createReadStream(archive).pipe(createGunzip()));
    expect(entries.map((e) => `${e.type} ${e.name.toString()}`)).toEqual([
      'directory incident-1',
      'file incident-1/events.jsonl',
      'directory incident-1/executable',
      'file incident-1/executable/12.exe',
      'file incident-1/manifest.json',
      'directory incident-1/memory',
      'file incident-1/memory/12.core',
    ]);
    expect(entries[6].content).toEqual(Buffer.alloc(3000, 'c'));
    expect(gnuNames(archive, '-z')).toEqual(entries.map((e) => e.name.toString() + (e.type === 'directory' ? '/' : '')));
    await expect(packDirectory(bundle, archive, { gzip: true })).rejects.toThrow(/EEXIST/);
  });

  it('refuses a symlink or a FIFO in the directory and leaves no archive', async () => {
    const bundle = path.join(dir, 'bundle');
    fs.mkdirSync(bundle);
    fs.writeFileSync(path.join(bundle, 'a'), 'a');
    fs.symlinkSync('/etc/passwd', path.join(bundle, 'evil'));
    const archive = path.join(dir, 'x.tar.gz');
    await expect(packDirectory(bundle, archive, { gzip: true })).rejects.toThrow('evil is not a regular file or directory: refusing to pack it');
    expect(fs.existsSync(archive)).toBe(false);
    fs.unlinkSync(path.join(bundle, 'evil'));
    execFileSync('mkfifo', [path.join(bundle, 'fifo')]);
    await expect(packDirectory(bundle, archive)).rejects.toThrow('fifo is not a regular file or directory');
    expect(fs.existsSync(archive)).toBe(false);
  });
});

describe('escapeName', () => {
  it.each([
    [Buffer.from('tmp/plain name.txt'), 'tmp/plain name.txt'],
    [Buffer.from('tmp/caf\u00e9-\u{1f600}'), 'tmp/caf\u00e9-\u{1f600}'],
    [Buffer.from('two\nlines\ttab'), 'two\\x0alines\\x09tab'],
    [Buffer.from([0x61, 0xff, 0xfe, 0x80]), 'a\\xff\\xfe\\x80'],
    [Buffer.from('back\\slash and \\x41'), 'back\\\\slash and \\\\x41'],
    [Buffer.from([0x7f]), '\\x7f'],
    [Buffer.from('\u202eexe.txt'), '\\xe2\\x80\\xaeexe.txt'], // a bidi override shown, not obeyed
    [Buffer.from([0xc0, 0xaf]), '\\xc0\\xaf'], // overlong '/'
    [Buffer.from([0xed, 0xa0, 0x80]), '\\xed\\xa0\\x80'], // a UTF-16 surrogate
    [Buffer.from([0x41, 0xe2, 0x82]), 'A\\xe2\\x82'], // cut short
  ])('%j as %j, and back', (raw, text) => {
    expect(escapeName(raw)).toBe(text);
    expect(unescapeName(text)).toEqual(raw);
  });

  it('round-trips any bytes', () => {
    let seed = 12345;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31);
    for (let i = 0; i < 2000; i++) {
      const raw = Buffer.from(Array.from({ length: next() % 24 }, () => (next() % 3 === 0 ? 0x80 + (next() % 0x80) : next() % 0x100)));
      const text = escapeName(raw);
      expect(JSON.parse(JSON.stringify(text))).toBe(text);
      expect(unescapeName(text)).toEqual(raw);
    }
  });

  it('refuses escapes it never writes', () => {
    expect(() => unescapeName('a\\qb')).toThrow('bad escape at 1');
    expect(() => unescapeName('a\\x4')).toThrow('bad escape');
    expect(() => unescapeName('end\\')).toThrow('bad escape');
  });
});
