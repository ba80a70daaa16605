/**
 * The upper layer of a real podman container, written by the container
 * itself as an attacker would: a symlink to a host file (never followed: its
 * marker must not reach the archive), FIFOs (skipped, the capture does not
 * hang), a 10 GiB sparse file, names with a newline and non-UTF-8 bytes, a
 * deleted image file (whiteout), a removed and recreated image directory
 * (opaque), a dropped binary and a hard link to it. Checked through our
 * reader and GNU tar. Then the executable copy of a process whose binary was
 * deleted and of one run from a memfd. Needs root.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs, { createReadStream } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyExecutable } from '../../src/incident/executable';
import { readTar, unescapeName, type TarEntry } from '../../src/incident/tar';
import { captureUpperLayer, type UpperLayerLogRecord } from '../../src/incident/upper-layer';
import { podman, startContainer, uniqueName, type Container } from '../helpers/podman';

const GIB = 1024 ** 3;
const MIB = 1024 * 1024;
const BUSYBOX = fs.readFileSync('/bin/busybox');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface ReadEntry extends Omit<TarEntry, 'data' | 'buffer'> {
  content: Buffer | null;
}

async function readArchive(file: string): Promise<ReadEntry[]> {
  const out: ReadEntry[] = [];
  for await (const e of readTar(createReadStream(file))) {
    const content = e.type === 'file' ? await e.buffer(16 * MIB) : null;
    const { data: _d, buffer: _b, ...rest } = e;
    out.push({ ...rest, content });
  }
  return out;
}

function gnuTar(...args: string[]): string {
  return execFileSync('tar', args, { encoding: 'latin1', env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** GNU tar's escape quoting style for raw bytes. */
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

const NEWLINE_NAME = Buffer.from('tmp/two\nlines');
const BINARY_NAME = Buffer.from([...Buffer.from('tmp/bad'), 0xff, 0xfe, ...Buffer.from('name')]);
const FIFO_NAME = Buffer.from([...Buffer.from('tmp/fifo\nbad'), 0xff]);

describe('upper layer capture (podman)', () => {
  let dir: string;
  let container: Container | undefined;
  let upperdir: string;
  const marker = `AMBER-UPPER-MARKER-${process.pid}-${Date.now()}`;
  let secret: string;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-upper-'));
    secret = path.join(dir, 'host-secret');
    fs.writeFileSync(secret, `${marker}\n`);
    container = await startContainer(uniqueName('amber-upper'));
    const script = [
      'set -e',
      'B=/bin/busybox',
      // an image directory removed and made again: opaque, the image's contents hidden
      'rm -rf /tmp && mkdir /tmp && chmod 1777 /tmp',
      // an image file deleted: a whiteout
      'rm /etc/passwd',
      `ln -s ${secret} /tmp/evil`,
      'ln -s / /tmp/rootlink',
      '$B mkfifo /tmp/fifo',
      `$B mkfifo "$($B printf 'tmp/fifo\\nbad\\377')"`,
      '$B truncate -s 10G /tmp/big',
      '$B printf AAAA | $B dd of=/tmp/big bs=1 seek=4096 conv=notrunc 2>/dev/null',
      `$B printf BBBB | $B dd of=/tmp/big bs=1 seek=${5 * GIB} conv=notrunc 2>/dev/null`,
      `$B printf CCCC | $B dd of=/tmp/big bs=1 seek=${10 * GIB - 4096} conv=notrunc 2>/dev/null`,
      '$B dd if=/dev/urandom of=/tmp/random bs=1024 count=3072 2>/dev/null',
      `echo newline > "$($B printf '/tmp/two\\nlines')"`,
      `echo bytes > "$($B printf '/tmp/bad\\377\\376name')"`,
      'cp /bin/busybox /tmp/x',
      'ln /tmp/x /tmp/x-again',
      'cd / && $B sync',
    ].join('\n');
    await container.exec('/bin/busybox', 'sh', '-c', script);
    upperdir = await podman('inspect', '--format', '{{.GraphDriver.Data.UpperDir}}', container.id);
    expect(upperdir).toMatch(/^\/.+\/diff$/);
  });

  afterAll(async () => {
    await container?.remove();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('captures what the container wrote, exactly, and nothing it points at', async () => {
    const archive = path.join(dir, 'upper-layer.tar');
    const logged: UpperLayerLogRecord[] = [];
    const atimeBefore = fs.statSync(path.join(upperdir, 'tmp/random'), { bigint: true }).atimeNs;
    const result = await captureUpperLayer(upperdir, archive, { maxFileBytes: 2 * MIB, maxTotalBytes: 64 * MIB, log: (r) => logged.push(r) });
    expect(fs.statSync(archive).mode & 0o777).toBe(0o600);
    expect(result.bytes).toBe(fs.statSync(archive).size);
    expect(result.bytes).toBeLessThan(5 * MIB);
    // read with O_NOATIME: the evidence's access time is what the container left
    expect(fs.statSync(path.join(upperdir, 'tmp/random'), { bigint: true }).atimeNs).toBe(atimeBefore);

    const entries = await readArchive(archive);
    const byName = new Map(entries.map((e) => [e.name.toString('latin1'), e]));
    const summary = [...byName.entries()].map(([n, e]) => `${e.type} ${n}`).sort();
    expect(summary).toEqual(
      [
        'directory etc',
        'file etc/.wh.passwd',
        'file etc/hostname',
        'file etc/hosts',
        'file etc/resolv.conf',
        'symlink etc/mtab',
        'directory run',
        'file run/.containerenv',
        'directory tmp',
        'file tmp/.wh..wh..opq',
        'symlink tmp/evil',
        'symlink tmp/rootlink',
        'file tmp/big',
        'file tmp/random',
        `file ${NEWLINE_NAME.toString('latin1')}`,
        `file ${BINARY_NAME.toString('latin1')}`,
        'file tmp/x',
        'hardlink tmp/x-again',
      ].sort(),
    );
    expect(result).toMatchObject({ entries: entries.length, files: 9, totalCapReached: false, omitted: 0 });

    // the symlink is a symlink: its target's bytes, and the host file's marker nowhere
    expect(byName.get('tmp/evil')).toMatchObject({ linkname: Buffer.from(secret) });
    expect(byName.get('tmp/rootlink')).toMatchObject({ linkname: Buffer.from('/') });
    expect(fs.readFileSync(archive).includes(marker)).toBe(false);

    // FIFOs skipped, never opened; their names reported losslessly
    expect(result.skipped.sort((a, b) => a.path.localeCompare(b.path))).toEqual([
      { path: 'tmp/fifo', reason: 'a FIFO' },
      { path: 'tmp/fifo\\x0abad\\xff', reason: 'a FIFO' },
    ]);
    expect(unescapeName(result.skipped[1].path)).toEqual(FIFO_NAME);
    expect(logged.filter((r) => r.msg === 'skipped').map((r) => r.path).sort()).toEqual(['tmp/fifo', 'tmp/fifo\\x0abad\\xff']);

    // deletions in the OCI layer conventions
    expect(result.deletions.sort((a, b) => a.path.localeCompare(b.path))).toEqual([
      { path: 'etc/passwd', opaque: false },
      { path: 'tmp', opaque: true },
    ]);
    expect(byName.get('etc/.wh.passwd')).toMatchObject({ size: 0, content: Buffer.alloc(0) });

    // the sparse file: 10 GiB, three data blocks stored
    const big = byName.get('tmp/big')!;
    expect(big).toMatchObject({ size: 10 * GIB, dataBytes: 3 * 4096 });
    expect(big.sparse).toEqual([
      { offset: 4096, size: 4096 },
      { offset: 5 * GIB, size: 4096 },
      { offset: 10 * GIB - 4096, size: 4096 },
    ]);
    expect(big.content!.subarray(0, 4)).toEqual(Buffer.from('AAAA'));
    expect(big.content!.subarray(4096, 4100)).toEqual(Buffer.from('BBBB'));
    expect(big.content!.subarray(8192, 8196)).toEqual(Buffer.from('CCCC'));

    // the per-file cap: the first 2 MiB, listed
    expect(result.truncated).toEqual([{ path: 'tmp/random', size: 3 * MIB, captured: 2 * MIB }]);
    const head = await container!.exec('/bin/busybox', 'sh', '-c', '/bin/busybox head -c 2097152 /tmp/random | /bin/busybox sha256sum');
    expect(sha256(byName.get('tmp/random')!.content!)).toBe(head.split(' ')[0]);

    // names kept byte for byte
    expect(byName.get(NEWLINE_NAME.toString('latin1'))!.content).toEqual(Buffer.from('newline\n'));
    expect(byName.get(BINARY_NAME.toString('latin1'))!.content).toEqual(Buffer.from('bytes\n'));

    // the dropped binary, and its hard link stored once
    expect(sha256(byName.get('tmp/x')!.content!)).toBe(sha256(BUSYBOX));
    expect(byName.get('tmp/x-again')).toMatchObject({ linkname: Buffer.from('tmp/x'), content: null });

    // GNU tar lists the same names and extracts the same bytes, holes kept
    const listed = gnuTar('-t', '--quoting-style=escape', '-f', archive).split('\n').filter(Boolean);
    expect(listed).toEqual(entries.map((e) => gnuEscape(e.type === 'directory' ? Buffer.concat([e.name, Buffer.from('/')]) : e.name)));
    const out = path.join(dir, 'extracted');
    fs.mkdirSync(out);
    gnuTar('-x', '-f', archive, '-C', out);
    const bigCopy = fs.statSync(path.join(out, 'tmp/big'));
    expect(bigCopy.size).toBe(10 * GIB);
    expect(bigCopy.blocks * 512).toBeLessThan(MIB);
    const fd = fs.openSync(path.join(out, 'tmp/big'), 'r');
    const at = (pos: number) => {
      const b = Buffer.alloc(4);
      fs.readSync(fd, b, 0, 4, pos);
      return b.toString();
    };
    expect([at(4096), at(5 * GIB), at(10 * GIB - 4096), at(GIB)]).toEqual(['AAAA', 'BBBB', 'CCCC', '\0\0\0\0']);
    fs.closeSync(fd);
    expect(fs.readFileSync(Buffer.concat([Buffer.from(`${out}/`), BINARY_NAME]), 'utf8')).toBe('bytes\n');
    expect(fs.readFileSync(Buffer.concat([Buffer.from(`${out}/`), NEWLINE_NAME]), 'utf8')).toBe('newline\n');
    expect(fs.statSync(path.join(out, 'tmp/x-again')).ino).toBe(fs.statSync(path.join(out, 'tmp/x')).ino);
    expect(fs.readlinkSync(path.join(out, 'tmp/evil'))).toBe(secret);
  });

  it('holds the total cap: entries that do not fit are skipped and listed, the archive stays under it', async () => {
    const archive = path.join(dir, 'capped.tar');
    const result = await captureUpperLayer(upperdir, archive, { maxFileBytes: 2 * MIB, maxTotalBytes: MIB });
    expect(result.totalCapReached).toBe(true);
    expect(result.bytes).toBe(fs.statSync(archive).size);
    expect(result.bytes).toBeLessThanOrEqual(MIB);
    const capped = result.skipped.filter((s) => s.reason === `the archive would pass its cap (${MIB} bytes)`).map((s) => s.path);
    // the files of more than a MiB of data never fit (both names of busybox: the first one seen is not stored,
    // so the second is a file again, too big again); everything else here is small
    expect(capped.sort()).toEqual(['tmp/random', 'tmp/x', 'tmp/x-again']);
    const entries = await readArchive(archive);
    expect(entries.map((e) => e.name.toString('latin1')).filter((n) => n.startsWith('tmp/x') || n === 'tmp/random')).toEqual([]);
    expect(entries.find((e) => e.name.toString() === 'tmp/big')).toMatchObject({ size: 10 * GIB, dataBytes: 3 * 4096 });
    expect(gnuTar('-t', '-f', archive).split('\n').filter(Boolean)).toHaveLength(entries.length);
  });

  it('never follows an entry swapped between a directory and a symlink to the host while it is read', async () => {
    const hostDir = path.join(dir, 'host-dir');
    fs.mkdirSync(hostDir);
    fs.writeFileSync(path.join(hostDir, 'inside'), `${marker}\n`);
    // the container flips tmp/race between a directory of its own and a symlink to the host's directory
    const loop = `B=/bin/busybox; while :; do $B rm -rf /tmp/race; $B mkdir /tmp/race; echo own > /tmp/race/inside; $B rm -rf /tmp/race; $B ln -s ${hostDir} /tmp/race; done`;
    await podman('exec', '-d', container!.id, '/bin/busybox', 'sh', '-c', loop);
    const seen = { symlink: 0, directory: 0, skipped: 0 };
    for (let i = 0; i < 30; i++) {
      const archive = path.join(dir, `race-${i}.tar`);
      const result = await captureUpperLayer(upperdir, archive, { maxFileBytes: 4096, maxTotalBytes: 64 * MIB });
      seen.skipped += result.skipped.filter((s) => s.path.startsWith('tmp/race')).length;
      expect(fs.readFileSync(archive).includes(marker)).toBe(false);
      for (const e of await readArchive(archive)) {
        if (e.name.toString() === 'tmp/race' && e.type === 'symlink') {
          expect(e.linkname).toEqual(Buffer.from(hostDir));
          seen.symlink++;
        }
        if (e.name.toString() === 'tmp/race' && e.type === 'directory') seen.directory++;
        if (e.name.toString() === 'tmp/race/inside') expect(e.content?.toString()).toMatch(/^(own\n|)$/);
      }
      fs.rmSync(archive);
    }
    // the flipping ran while the captures walked (which states each one met is up to timing)
    expect(seen.symlink + seen.directory + seen.skipped).toBeGreaterThan(0);
  });

  it('refuses to overwrite, and to start from a symlink', async () => {
    const archive = path.join(dir, 'exists.tar');
    fs.writeFileSync(archive, 'mine');
    await expect(captureUpperLayer(upperdir, archive, { maxFileBytes: MIB, maxTotalBytes: MIB })).rejects.toThrow(/EEXIST/);
    expect(fs.readFileSync(archive, 'utf8')).toBe('mine');
    fs.symlinkSync(upperdir, path.join(dir, 'upper-link'));
    await expect(captureUpperLayer(path.join(dir, 'upper-link'), path.join(dir, 'never.tar'), { maxFileBytes: MIB, maxTotalBytes: MIB })).rejects.toThrow(
      'cannot open the directory: not a directory, or a symbolic link (never followed)',
    );
    expect(fs.existsSync(path.join(dir, 'never.tar'))).toBe(false);
  });
});

describe('executable copy (podman)', () => {
  let dir: string;
  let container: Container | undefined;

  /** The host pid of the container process whose arguments are `args`. */
  async function hostPid(args: string): Promise<number> {
    for (let i = 0; i < 50; i++) {
      const rows = (await podman('top', container!.id, 'hpid', 'args')).split('\n').slice(1);
      const row = rows.find((r) => r.trim().split(/\s+/).slice(1).join(' ') === args);
      if (row) return Number(row.trim().split(/\s+/)[0]);
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`no process "${args}" in the container`);
  }

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-exe-'));
    execFileSync('cc', ['-static', '-O2', '-o', path.join(dir, 'memfd-exec'), path.join(__dirname, '..', 'helpers', 'memfd-exec.c')]);
    container = await startContainer(uniqueName('amber-exe'));
    await podman('cp', path.join(dir, 'memfd-exec'), `${container.id}:/memfd-exec`);
    await podman('exec', '-d', container.id, '/bin/busybox', 'sh', '-c', 'cp /bin/busybox /tmp/sleep && exec /tmp/sleep 601');
    await podman('exec', '-d', container.id, '/memfd-exec', 'sleep', '602');
  });

  afterAll(async () => {
    await container?.remove();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('copies a binary deleted after it started', async () => {
    const pid = await hostPid('/tmp/sleep 601');
    await container!.exec('/bin/busybox', 'rm', '/tmp/sleep');
    const out = path.join(dir, `${pid}.exe`);
    const copy = await copyExecutable(pid, out, { maxBytes: 64 * MIB });
    expect(copy).toEqual({
      size: BUSYBOX.length,
      fileSize: BUSYBOX.length,
      sha256: sha256(BUSYBOX),
      truncated: false,
      deleted: true,
      memfd: false,
      exePath: '/tmp/sleep (deleted)',
    });
    // Buffer.equals: vitest's deep equality walks a 2 MB Buffer byte by byte for seconds
    expect(fs.readFileSync(out).equals(BUSYBOX)).toBe(true);
    expect(fs.statSync(out).mode & 0o777).toBe(0o600);
  });

  it('copies a binary run from a memfd', async () => {
    const pid = await hostPid('sleep 602');
    const out = path.join(dir, `${pid}.exe`);
    const copy = await copyExecutable(pid, out, { maxBytes: 64 * MIB });
    expect(copy).toEqual({
      size: BUSYBOX.length,
      fileSize: BUSYBOX.length,
      sha256: sha256(BUSYBOX),
      truncated: false,
      deleted: false,
      memfd: true,
      exePath: '/memfd:amber-x (deleted)',
    });
    // the cap: the start copied and hashed, marked truncated
    const cut = await copyExecutable(pid, path.join(dir, 'cut.exe'), { maxBytes: 1000 });
    expect(cut).toMatchObject({ size: 1000, fileSize: BUSYBOX.length, sha256: sha256(BUSYBOX.subarray(0, 1000)), truncated: true });
    expect(fs.statSync(path.join(dir, 'cut.exe')).size).toBe(1000);
    // never over an existing file, and a gone process is an error, not a throw
    expect(await copyExecutable(pid, out, { maxBytes: MIB })).toEqual({ error: `cannot create ${out}: EEXIST: file already exists, open '${out}'` });
    expect(await copyExecutable(2 ** 22 + 1, path.join(dir, 'none.exe'), { maxBytes: MIB })).toEqual({ error: 'the process has exited' });
    expect(fs.existsSync(path.join(dir, 'none.exe'))).toBe(false);
  });
});
