/**
 * POSIX pax tar (ustar headers + pax extended headers), written as a stream
 * and read back. Names and link targets are raw bytes and kept exactly (a
 * newline, a non-UTF-8 byte: pax `path`/`linkpath` with hdrcharset=BINARY);
 * sizes past 8 GiB, large ids and ns mtimes go in pax records too. Files with
 * holes are stored in GNU sparse format 1.0 (pax GNU.sparse.*, the map at the
 * start of the data), so a 10 GiB file with a few data blocks stays small;
 * data is found with SEEK_DATA/SEEK_HOLE. GNU tar, bsdtar and Python's tarfile
 * read what this writes; readTar reads it back for verify and the tests.
 */
import { constants as C, closeSync, fstatSync, lstatSync, openSync, read, readdirSync, promises as fsp } from 'node:fs';
import { Writable } from 'node:stream';
import { createGzip } from 'node:zlib';
import { loadBinding, type NativeFiles } from '../sensor/binding';
import { createExclusive } from '../buffer/datadir';

const BLOCK = 512;
const CHUNK = 1 << 20;
/** Largest values the ustar octal fields hold; beyond them pax records (and GNU base-256) carry the value. */
const MAX_OCTAL_8 = 0o7777777;
const MAX_OCTAL_12 = 0o77777777777;
/** A sparse map longer than this ends in one data segment to the end: the map stays small, the bytes stay right. */
export const MAX_SPARSE_SEGMENTS = 65536;
/** A pax header or sparse map larger than this is refused by the reader (ours are far smaller). */
const MAX_META_BYTES = 16 << 20;

let files: NativeFiles | undefined;
function nativeFiles(): NativeFiles {
  files ??= loadBinding().files;
  return files;
}

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'hardlink';

export interface TarHeader {
  /** Raw bytes, '/'-separated, relative; a directory's trailing '/' is added by the writer and removed by the reader. */
  name: Buffer;
  /** Permission bits (07777). */
  mode: number;
  uid: number;
  gid: number;
  /** ns since the epoch. */
  mtimeNs: bigint;
}

export interface SparseSegment {
  offset: number;
  size: number;
}

/** What of a file goes into the archive: decided before its header is written (the header holds the sizes). */
export interface FilePlan {
  /** The size the entry has when extracted: the file's size, or less when the data cap cut it. */
  size: number;
  /** Data segments within [0, size), in order. One segment [0, size) for a file without holes. */
  segments: SparseSegment[];
  /** Bytes of data stored (the segments' total). */
  dataBytes: number;
  /** Stored in GNU sparse 1.0 form (the file has holes). */
  sparse: boolean;
  /** Bytes after the header: the sparse map block (when sparse) and the data, unpadded. */
  storedBytes: number;
  /** The data cap cut the file short. */
  truncated: boolean;
}

export interface PlanOptions {
  /** Stop after this many bytes of data: the entry ends where that data ends. */
  maxDataBytes?: number;
  /** false: store every byte, holes read as zeros. */
  sparse?: boolean;
}

/** Where the data of fd's first `size` bytes lies (SEEK_DATA/SEEK_HOLE), capped by maxDataBytes. */
export function planFile(fd: number, size: number, options: PlanOptions = {}): FilePlan {
  const maxData = options.maxDataBytes ?? Number.MAX_SAFE_INTEGER;
  const segments: SparseSegment[] = [];
  if (options.sparse === false) {
    if (size > 0) segments.push({ offset: 0, size });
  } else {
    const native = nativeFiles();
    for (let pos = 0; pos < size; ) {
      const start = native.seekData(fd, pos);
      if (start < 0 || start >= size) break;
      if (segments.length === MAX_SPARSE_SEGMENTS - 1) {
        segments.push({ offset: start, size: size - start });
        break;
      }
      let end = native.seekHole(fd, start);
      if (end < 0 || end > size) end = size;
      if (end <= start) end = size; // a file growing under us; never loop
      segments.push({ offset: start, size: end - start });
      pos = end;
    }
  }
  let dataBytes = 0;
  let cutSize = size;
  let truncated = false;
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i];
    if (dataBytes + seg.size > maxData) {
      const keep = maxData - dataBytes;
      truncated = true;
      cutSize = seg.offset + keep;
      segments.length = keep > 0 ? i + 1 : i;
      if (keep > 0) seg.size = keep;
      dataBytes += keep;
      break;
    }
    dataBytes += seg.size;
  }
  const finalSize = truncated ? cutSize : size;
  const sparse = !(segments.length === 0 ? finalSize === 0 : segments.length === 1 && segments[0].offset === 0 && segments[0].size === finalSize);
  if (sparse) {
    // GNU tar's convention: a file ending in a hole ends its map with an empty segment at the end
    const last = segments[segments.length - 1];
    if (last === undefined || last.offset + last.size < finalSize) segments.push({ offset: finalSize, size: 0 });
  }
  const storedBytes = sparse ? padded(sparseMap(segments).length) + dataBytes : dataBytes;
  return { size: finalSize, segments, dataBytes, sparse, storedBytes, truncated };
}

export interface FileWritten {
  /** The file was shorter than planned when read (the missing bytes are zeros). */
  changed: boolean;
}

export type TarSink = Writable | fsp.FileHandle;

/**
 * Writes entries to a stream (waiting for 'drain') or a file handle. The
 * caller owns the sink: finish() writes the end-of-archive blocks, the caller
 * then ends or closes it.
 */
export class TarWriter {
  /** Bytes written so far. */
  bytes = 0;
  private finished = false;

  constructor(private readonly out: TarSink) {}

  async directory(header: TarHeader): Promise<void> {
    const name = header.name.length > 0 && header.name[header.name.length - 1] === 0x2f ? header.name : Buffer.concat([header.name, SLASH]);
    await this.writeHeader({ ...header, name }, '5', 0, null, []);
  }

  /** A symlink, stored as one: its target's exact bytes, never followed. */
  async symlink(header: TarHeader, target: Buffer): Promise<void> {
    await this.writeHeader(header, '2', 0, target, []);
  }

  /** A second name of a file already in the archive as `target`. */
  async hardlink(header: TarHeader, target: Buffer): Promise<void> {
    await this.writeHeader(header, '1', 0, target, []);
  }

  /** A regular file from memory. */
  async buffer(header: TarHeader, data: Buffer): Promise<void> {
    await this.writeHeader(header, '0', data.length, null, []);
    await this.write(data);
    await this.pad(data.length);
  }

  /** A regular file read from fd as planned (planFile): holes stay holes. */
  async file(header: TarHeader, fd: number, plan: FilePlan): Promise<FileWritten> {
    let changed = false;
    if (!plan.sparse) {
      await this.writeHeader(header, '0', plan.storedBytes, null, []);
      if (plan.segments.length > 0) changed = await this.copy(fd, 0, plan.size);
    } else {
      const map = sparseMap(plan.segments);
      const records: PaxRecord[] = [
        ['GNU.sparse.major', Buffer.from('1')],
        ['GNU.sparse.minor', Buffer.from('0')],
        ['GNU.sparse.name', header.name],
        ['GNU.sparse.realsize', Buffer.from(String(plan.size))],
      ];
      const fallback = Buffer.concat([dirOf(header.name), Buffer.from('GNUSparseFile.0/'), baseOf(header.name)]);
      await this.writeHeader({ ...header, name: fallback }, '0', plan.storedBytes, null, records, true);
      await this.write(map);
      await this.pad(map.length);
      for (const seg of plan.segments) if (seg.size > 0 && (await this.copy(fd, seg.offset, seg.size))) changed = true;
    }
    await this.pad(plan.dataBytes);
    return { changed };
  }

  /** Writes the two zero blocks that end the archive; returns the archive's bytes. */
  async finish(): Promise<number> {
    if (!this.finished) {
      this.finished = true;
      await this.write(Buffer.alloc(2 * BLOCK));
    }
    return this.bytes;
  }

  private async copy(fd: number, offset: number, length: number): Promise<boolean> {
    let changed = false;
    for (let done = 0; done < length; ) {
      const n = Math.min(CHUNK, length - done);
      // a new buffer per chunk: a stream keeps it until it is flushed
      const buf = Buffer.allocUnsafe(n);
      let got = 0;
      while (got < n) {
        const r = await readAt(fd, buf, got, n - got, offset + done + got);
        if (r === 0) break;
        got += r;
      }
      if (got < n) {
        // the file shrank since it was planned: zeros keep the header's sizes true
        buf.fill(0, got);
        changed = true;
      }
      await this.write(buf);
      done += n;
    }
    return changed;
  }

  private async writeHeader(
    header: TarHeader,
    typeflag: string,
    size: number,
    linkname: Buffer | null,
    extra: PaxRecord[],
    nameInPax = false,
  ): Promise<void> {
    if (this.finished) throw new Error('tar: entry added after finish()');
    const records: PaxRecord[] = [];
    const name = ustarName(header.name);
    if (name === null && !nameInPax) records.push(['path', header.name]);
    if (linkname !== null && !(linkname.length <= 100 && isPlainAscii(linkname))) records.push(['linkpath', linkname]);
    if (size > MAX_OCTAL_12) records.push(['size', Buffer.from(String(size))]);
    if (header.uid > MAX_OCTAL_8) records.push(['uid', Buffer.from(String(header.uid))]);
    if (header.gid > MAX_OCTAL_8) records.push(['gid', Buffer.from(String(header.gid))]);
    const seconds = floorDiv(header.mtimeNs, NS);
    if (header.mtimeNs % NS !== 0n || seconds < 0n || seconds > BigInt(MAX_OCTAL_12)) records.push(['mtime', Buffer.from(formatTime(header.mtimeNs))]);
    records.push(...extra);
    if (records.some(([, value]) => !isUtf8(value))) records.unshift(['hdrcharset', Buffer.from('BINARY')]);
    const fallback = name ?? fallbackName(header.name);
    if (records.length > 0) {
      const data = Buffer.concat(records.map(paxRecord));
      const paxName = Buffer.concat([Buffer.from('PaxHeaders/'), fallbackName(baseOf(header.name))]).subarray(0, 100);
      await this.write(ustarHeader({ name: paxName, prefix: EMPTY }, 'x', 0o644, 0, 0, seconds, data.length, EMPTY));
      await this.write(data);
      await this.pad(data.length);
    }
    const link = linkname === null ? EMPTY : linkname.length <= 100 && isPlainAscii(linkname) ? linkname : fallbackName(linkname);
    await this.write(ustarHeader(fallback, typeflag, header.mode & 0o7777, header.uid, header.gid, seconds, size, link));
  }

  private async pad(length: number): Promise<void> {
    const rest = length % BLOCK;
    if (rest !== 0) await this.write(Buffer.alloc(BLOCK - rest));
  }

  private async write(buf: Buffer): Promise<void> {
    if (buf.length === 0) return;
    const out = this.out;
    if (out instanceof Writable) {
      if (out.destroyed || out.errored) throw out.errored ?? new Error('tar: the output stream is closed');
      if (!out.write(buf)) await drained(out);
    } else {
      for (let off = 0; off < buf.length; ) off += (await out.write(buf, off, buf.length - off, null)).bytesWritten;
    }
    this.bytes += buf.length;
  }
}

/** Resolves on 'drain'; rejects when the stream errors or closes first (a 'drain' that never comes would hang us). */
function drained(out: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const settle = (err?: Error): void => {
      out.off('drain', onDrain).off('error', onError).off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = (): void => settle();
    const onError = (err: Error): void => settle(err);
    const onClose = (): void => settle(out.errored ?? new Error('tar: the output stream closed'));
    out.on('drain', onDrain).on('error', onError).on('close', onClose);
  });
}

// ---------------------------------------------------------------- reader

export interface TarEntry {
  /** Raw bytes as stored (pax path, GNU.sparse.name, or ustar prefix/name), a directory's trailing '/' removed. */
  name: Buffer;
  type: TarEntryType | 'other';
  /** The ustar typeflag character. */
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  /** The file's size when extracted: a sparse file's real size. */
  size: number;
  /** Symlink target or hard link's first name, raw bytes; null for other types. */
  linkname: Buffer | null;
  /** The pax records of the entry's extended header, values raw. */
  pax: Map<string, Buffer>;
  /** A sparse file's data segments (GNU 1.0), null for others. */
  sparse: SparseSegment[] | null;
  /** Bytes of data stored in the archive (a sparse file's segments, its map excluded). */
  dataBytes: number;
  /** The stored data (a sparse file's segments back to back); read it before asking for the next entry, or it is skipped. */
  data(): AsyncIterable<Buffer>;
  /** data() in one Buffer; refuses an entry with more than maxBytes. */
  buffer(maxBytes?: number): Promise<Buffer>;
}

export class TarFormatError extends Error {
  override name = 'TarFormatError';
}

/** Reads the entries of an archive (a pax tar as TarWriter writes it; also plain ustar): a stream, or Buffers. */
export async function* readTar(input: AsyncIterable<Buffer | string> | Iterable<Buffer>): AsyncGenerator<TarEntry> {
  const src = new ByteSource(input);
  for (;;) {
    const at = src.offset;
    const block = await src.readMaybe(BLOCK);
    if (block === null) throw new TarFormatError(`tar: ends at byte ${at} without the end-of-archive blocks`);
    if (isZero(block)) {
      const second = await src.readMaybe(BLOCK);
      if (second !== null && !isZero(second)) throw new TarFormatError(`tar: a lone zero block at byte ${at}`);
      return;
    }
    let head = parseHeader(block, at);
    let pax = new Map<string, Buffer>();
    while (head.typeflag === 'x' || head.typeflag === 'g') {
      if (head.size > MAX_META_BYTES) throw new TarFormatError(`tar: pax header at byte ${at} is ${head.size} bytes (limit ${MAX_META_BYTES})`);
      const data = await src.read(head.size, 'pax header');
      await src.skip(padding(head.size));
      // global records ('g'): never ours; their keys are not applied
      if (head.typeflag === 'x') pax = parsePax(data, at);
      const next = src.offset;
      const b = await src.readMaybe(BLOCK);
      if (b === null || isZero(b)) throw new TarFormatError(`tar: pax header at byte ${at} is not followed by an entry`);
      head = parseHeader(b, next);
    }
    let name = pax.get('GNU.sparse.name') ?? pax.get('path') ?? head.name;
    const linkname = pax.get('linkpath') ?? head.linkname;
    const storedSize = pax.has('size') ? paxNumber(pax, 'size', at) : head.size;
    const uid = pax.has('uid') ? paxNumber(pax, 'uid', at) : head.uid;
    const gid = pax.has('gid') ? paxNumber(pax, 'gid', at) : head.gid;
    const mtimeNs = pax.has('mtime') ? parseTime(pax.get('mtime')!.toString('latin1'), at) : head.mtime * NS;
    const type = TYPES[head.typeflag] ?? 'other';
    if (type === 'directory' && name.length > 1 && name[name.length - 1] === 0x2f) name = name.subarray(0, name.length - 1);
    let sparse: SparseSegment[] | null = null;
    let size = storedSize;
    let remaining = type === 'directory' || type === 'symlink' || type === 'hardlink' ? 0 : storedSize;
    const totalPadding = padding(remaining);
    if (pax.has('GNU.sparse.major')) {
      const major = pax.get('GNU.sparse.major')!.toString('latin1');
      const minor = pax.get('GNU.sparse.minor')?.toString('latin1');
      if (major !== '1' || minor !== '0') throw new TarFormatError(`tar: entry at byte ${at}: GNU sparse format ${major}.${minor} is not supported (1.0 is)`);
      size = paxNumber(pax, 'GNU.sparse.realsize', at);
      const read = await readSparseMap(src, remaining, at);
      sparse = read.segments;
      remaining -= read.bytes;
      const total = sparse.reduce((s, seg) => s + seg.size, 0);
      if (total !== remaining) throw new TarFormatError(`tar: entry at byte ${at}: sparse map holds ${total} bytes, the entry ${remaining}`);
    }
    const dataBytes = remaining;
    const state = { left: remaining, consumed: false };
    const data = async function* (): AsyncGenerator<Buffer> {
      if (state.consumed) throw new Error("tar: an entry's data can be read once, before the next entry");
      state.consumed = true;
      while (state.left > 0) {
        const chunk = await src.upTo(state.left);
        state.left -= chunk.length;
        yield chunk;
      }
    };
    yield {
      name,
      type,
      typeflag: head.typeflag,
      mode: head.mode,
      uid,
      gid,
      mtimeNs,
      size,
      linkname: type === 'symlink' || type === 'hardlink' ? linkname : null,
      pax,
      sparse,
      dataBytes,
      data,
      async buffer(maxBytes = 64 << 20) {
        if (dataBytes > maxBytes) throw new Error(`tar: entry holds ${dataBytes} bytes, more than ${maxBytes}`);
        const parts: Buffer[] = [];
        for await (const chunk of data()) parts.push(chunk);
        return Buffer.concat(parts);
      },
    };
    // whatever the consumer left unread is skipped
    state.consumed = true;
    await src.skip(state.left + totalPadding);
    state.left = 0;
  }
}

// ---------------------------------------------------------------- names as text

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

/** Code points shown escaped although valid: controls, and the bidi controls that make a name read as another. */
function escapedCodePoint(cp: number): boolean {
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp === 0x200e || cp === 0x200f || (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

/**
 * A name's raw bytes as text, losslessly (unescapeName reverses it): valid
 * UTF-8 kept as characters, "\" doubled, and every other byte (invalid
 * UTF-8, controls such as a newline, bidi controls) as \xHH.
 */
export function escapeName(name: Buffer): string {
  let out = '';
  for (let i = 0; i < name.length; ) {
    const c = name[i];
    if (c === 0x5c) {
      out += '\\\\';
      i++;
      continue;
    }
    const len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (len > 0 && i + len <= name.length) {
      let text: string | null = null;
      try {
        text = STRICT_UTF8.decode(name.subarray(i, i + len));
      } catch {
        text = null;
      }
      if (text !== null && !escapedCodePoint(text.codePointAt(0)!)) {
        out += text;
        i += len;
        continue;
      }
    }
    out += `\\x${c.toString(16).padStart(2, '0')}`;
    i++;
  }
  return out;
}

/** The raw bytes escapeName's text stands for; throws on an escape it does not write. */
export function unescapeName(text: string): Buffer {
  const parts: Buffer[] = [];
  let plain = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== '\\') {
      plain += text[i];
      continue;
    }
    parts.push(Buffer.from(plain, 'utf8'));
    plain = '';
    if (text[i + 1] === '\\') {
      parts.push(Buffer.from([0x5c]));
      i++;
    } else if (text[i + 1] === 'x' && /^[0-9a-f]{2}$/.test(text.slice(i + 2, i + 4))) {
      parts.push(Buffer.from([parseInt(text.slice(i + 2, i + 4), 16)]));
      i += 3;
    } else {
      throw new Error(`not an escaped name: bad escape at ${i} in ${JSON.stringify(text)}`);
    }
  }
  parts.push(Buffer.from(plain, 'utf8'));
  return Buffer.concat(parts);
}

// ---------------------------------------------------------------- packDirectory

export interface PackOptions {
  /** gzip the archive (node:zlib). */
  gzip?: boolean;
  /** A directory name the entries are put under ('' or absent: none). */
  prefix?: string;
}

/**
 * Packs a directory of Amber's own (a bundle) into a new archive, created
 * exclusively (owner-only): regular files and directories only, anything else
 * refused with an error naming it; entries sorted by their bytes. A failure
 * removes the partial archive.
 */
export async function packDirectory(dir: string, archivePath: string, options: PackOptions = {}): Promise<{ entries: number; bytes: number }> {
  const rels: Buffer[] = [];
  const walk = (rel: Buffer): void => {
    const at = rel.length === 0 ? Buffer.from(dir) : Buffer.concat([Buffer.from(`${dir}/`), rel]);
    for (const child of readdirSync(at, { encoding: 'buffer' })) {
      const childRel = rel.length === 0 ? child : Buffer.concat([rel, SLASH, child]);
      const st = lstatSync(Buffer.concat([at, SLASH, child]));
      if (st.isDirectory()) {
        rels.push(childRel);
        walk(childRel);
      } else if (st.isFile()) rels.push(childRel);
      else throw new Error(`pack ${dir}: ${childRel.toString()} is not a regular file or directory: refusing to pack it`);
    }
  };
  walk(EMPTY);
  rels.sort(Buffer.compare);
  const prefix = (options.prefix ?? '').replace(/^\/+|\/+$/g, '');
  const fh = await createExclusive(archivePath);
  let ok = false;
  try {
    let entries = 0;
    const writeAll = async (out: TarSink): Promise<void> => {
      const tar = new TarWriter(out);
      const header = (rel: Buffer, st: import('node:fs').BigIntStats): TarHeader => ({
        name: prefix === '' ? rel : rel.length === 0 ? Buffer.from(prefix) : Buffer.concat([Buffer.from(`${prefix}/`), rel]),
        mode: Number(st.mode & 0o7777n),
        uid: Number(st.uid),
        gid: Number(st.gid),
        mtimeNs: st.mtimeNs,
      });
      if (prefix !== '') {
        await tar.directory(header(EMPTY, lstatSync(dir, { bigint: true })));
        entries++;
      }
      for (const rel of rels) {
        const full = Buffer.concat([Buffer.from(`${dir}/`), rel]);
        const fd = openSync(full, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK | C.O_NOCTTY);
        try {
          const st = fstatSync(fd, { bigint: true });
          if (st.isDirectory()) await tar.directory(header(rel, st));
          else if (st.isFile()) {
            const written = await tar.file(header(rel, st), fd, planFile(fd, Number(st.size)));
            if (written.changed) throw new Error(`pack ${dir}: ${rel.toString()} shrank while it was packed`);
          } else throw new Error(`pack ${dir}: ${rel.toString()} is not a regular file or directory: refusing to pack it`);
        } finally {
          closeSync(fd);
        }
        entries++;
      }
      await tar.finish();
    };
    if (options.gzip) {
      // the fastest level: the archive is for shipping; most of a bundle (cores) compresses either way or not at all
      const gzip = createGzip({ level: 1 });
      // not fh.createWriteStream: with autoClose off, fh.close() then waits forever (Node 20)
      const done = (async () => {
        for await (const chunk of gzip as AsyncIterable<Buffer>) {
          for (let off = 0; off < chunk.length; ) off += (await fh.write(chunk, off, chunk.length - off, null)).bytesWritten;
        }
      })().catch((err: unknown) => {
        // a failed write (disk full) stops the writer too: it may be waiting for 'drain'
        gzip.destroy(err as Error);
        throw err;
      });
      try {
        await writeAll(gzip);
        gzip.end();
      } catch (err) {
        gzip.destroy(err as Error);
        await done.catch(() => {});
        throw err;
      }
      await done;
    } else {
      await writeAll(fh);
    }
    await fh.sync();
    const bytes = (await fh.stat()).size;
    ok = true;
    return { entries, bytes };
  } finally {
    await fh.close().catch(() => {});
    if (!ok) await fsp.unlink(archivePath).catch(() => {});
  }
}

// ---------------------------------------------------------------- helpers

const NS = 1_000_000_000n;
const EMPTY = Buffer.alloc(0);
const SLASH = Buffer.from('/');
const TYPES: Record<string, TarEntryType> = { '0': 'file', '\0': 'file', '7': 'file', '1': 'hardlink', '2': 'symlink', '5': 'directory' };

type PaxRecord = [string, Buffer];

function readAt(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => read(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))));
}

function padded(n: number): number {
  return n + padding(n);
}

function padding(n: number): number {
  return (BLOCK - (n % BLOCK)) % BLOCK;
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b !== 0n && a < 0n ? q - 1n : q;
}

/** The sparse 1.0 map block: count, then offset and size per segment, one decimal a line, padded to a block. */
function sparseMap(segments: SparseSegment[]): Buffer {
  const text = [String(segments.length), ...segments.flatMap((s) => [String(s.offset), String(s.size)])].join('\n') + '\n';
  const buf = Buffer.alloc(padded(text.length));
  buf.write(text, 'latin1');
  return buf;
}

/** "sec.nnnnnnnnn", the exact decimal (negative times too), trailing zeros trimmed. */
function formatTime(ns: bigint): string {
  const sign = ns < 0n ? '-' : '';
  const abs = ns < 0n ? -ns : ns;
  const frac = (abs % NS).toString().padStart(9, '0').replace(/0+$/, '');
  return `${sign}${abs / NS}${frac === '' ? '' : `.${frac}`}`;
}

function parseTime(text: string, at: number): bigint {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text);
  if (m === null) throw new TarFormatError(`tar: entry at byte ${at}: bad pax mtime "${text}"`);
  const abs = BigInt(m[2]) * NS + BigInt((m[3] ?? '').slice(0, 9).padEnd(9, '0'));
  return m[1] === '-' ? -abs : abs;
}

function paxRecord([key, value]: PaxRecord): Buffer {
  const base = Buffer.byteLength(key) + value.length + 3;
  let len = base + String(base).length;
  if (String(len).length !== String(base).length) len = base + String(len).length;
  return Buffer.concat([Buffer.from(`${len} ${key}=`), value, Buffer.from('\n')]);
}

function parsePax(data: Buffer, at: number): Map<string, Buffer> {
  const records = new Map<string, Buffer>();
  for (let pos = 0; pos < data.length; ) {
    if (data[pos] === 0) break; // some writers pad the data with NULs
    const space = data.indexOf(0x20, pos);
    const len = space < 0 ? NaN : Number(data.subarray(pos, space).toString('latin1'));
    if (!Number.isInteger(len) || len <= space - pos + 1 || pos + len > data.length || data[pos + len - 1] !== 0x0a) {
      throw new TarFormatError(`tar: malformed pax record in the header at byte ${at}`);
    }
    const record = data.subarray(space + 1, pos + len - 1);
    const eq = record.indexOf(0x3d);
    if (eq <= 0) throw new TarFormatError(`tar: malformed pax record in the header at byte ${at}`);
    records.set(record.subarray(0, eq).toString('utf8'), Buffer.from(record.subarray(eq + 1)));
    pos += len;
  }
  return records;
}

function paxNumber(pax: Map<string, Buffer>, key: string, at: number): number {
  const text = pax.get(key)?.toString('latin1') ?? '';
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) throw new TarFormatError(`tar: entry at byte ${at}: bad pax ${key} "${text}"`);
  return Number(text);
}

/** Printable ASCII (what every tar reader takes in a ustar field as it is). */
function isPlainAscii(b: Buffer): boolean {
  for (const c of b) if (c < 0x20 || c > 0x7e) return false;
  return true;
}

function isUtf8(b: Buffer): boolean {
  return Buffer.from(b.toString('utf8'), 'utf8').equals(b);
}

/** The name in ustar's prefix/name fields when it fits as plain ASCII; null when it needs a pax path. */
function ustarName(name: Buffer): { name: Buffer; prefix: Buffer } | null {
  if (!isPlainAscii(name)) return null;
  if (name.length <= 100) return { name, prefix: EMPTY };
  // split at a '/' so the prefix holds <= 155 bytes and the rest <= 100
  for (let i = name.length - 101; i < name.length; i++) {
    if (i > 0 && name[i] === 0x2f && i <= 155 && name.length - i - 1 <= 100 && name.length - i - 1 > 0) {
      return { prefix: name.subarray(0, i), name: name.subarray(i + 1) };
    }
  }
  return null;
}

/** A stand-in for readers without pax: printable ASCII, the end of the name kept, at most 100 bytes. */
function fallbackName(name: Buffer): Buffer {
  const out = Buffer.from(name.map((c) => (c < 0x20 || c > 0x7e ? 0x5f : c)));
  return out.length <= 100 ? out : out.subarray(out.length - 100);
}

function dirOf(name: Buffer): Buffer {
  const slash = name.lastIndexOf(0x2f);
  return slash < 0 ? EMPTY : name.subarray(0, slash + 1);
}

function baseOf(name: Buffer): Buffer {
  const trimmed = name.length > 1 && name[name.length - 1] === 0x2f ? name.subarray(0, name.length - 1) : name;
  return trimmed.subarray(trimmed.lastIndexOf(0x2f) + 1);
}

function ustarHeader(
  name: { name: Buffer; prefix: Buffer } | Buffer,
  typeflag: string,
  mode: number,
  uid: number,
  gid: number,
  mtimeSeconds: bigint,
  size: number,
  linkname: Buffer,
): Buffer {
  const h = Buffer.alloc(BLOCK);
  const n = Buffer.isBuffer(name) ? { name, prefix: EMPTY } : name;
  n.name.copy(h, 0, 0, 100);
  writeNumber(h, 100, 8, BigInt(mode));
  writeNumber(h, 108, 8, BigInt(uid));
  writeNumber(h, 116, 8, BigInt(gid));
  writeNumber(h, 124, 12, BigInt(size));
  writeNumber(h, 136, 12, mtimeSeconds);
  h.write(typeflag, 156, 1, 'latin1');
  linkname.copy(h, 157, 0, 100);
  h.write('ustar\x0000', 257, 8, 'latin1');
  n.prefix.copy(h, 345, 0, 155);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const c of h) sum += c;
  h.write(`${sum.toString(8).padStart(6, '0')}\x00 `, 148, 8, 'latin1');
  return h;
}

/** Octal with a NUL when it fits, else GNU base-256 (two's complement, first byte's top bit set). */
function writeNumber(h: Buffer, off: number, len: number, value: bigint): void {
  if (value >= 0n && value < 8n ** BigInt(len - 1)) {
    h.write(`${value.toString(8).padStart(len - 1, '0')}\x00`, off, len, 'latin1');
    return;
  }
  let v = value < 0n ? (1n << BigInt(8 * len)) + value : value;
  for (let i = len - 1; i >= 0; i--) {
    h[off + i] = Number(v & 0xffn);
    v >>= 8n;
  }
  h[off] |= 0x80;
}

function readNumber(h: Buffer, off: number, len: number): bigint {
  const field = h.subarray(off, off + len);
  if (field[0] & 0x80) {
    let v = BigInt(field[0] & 0x7f);
    for (let i = 1; i < len; i++) v = (v << 8n) | BigInt(field[i]);
    // 0xff marks a negative number
    return field[0] === 0xff ? v - (1n << BigInt(8 * len - 1)) : v;
  }
  const text = field.toString('latin1').replace(/[\0 ]+$/, '').replace(/^ +/, '');
  if (text === '') return 0n;
  if (!/^[0-7]+$/.test(text)) throw new TarFormatError(`tar: bad number field "${text}"`);
  return BigInt(`0o${text}`);
}

function cstring(h: Buffer, off: number, len: number): Buffer {
  const field = h.subarray(off, off + len);
  const nul = field.indexOf(0);
  return Buffer.from(nul < 0 ? field : field.subarray(0, nul));
}

interface RawHeader {
  name: Buffer;
  linkname: Buffer;
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: bigint;
}

function parseHeader(h: Buffer, at: number): RawHeader {
  const stored = Number(readNumber(h, 148, 8));
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i];
  if (sum !== stored) throw new TarFormatError(`tar: header at byte ${at}: bad checksum (not a tar archive, or damaged)`);
  const magic = h.subarray(257, 263).toString('latin1');
  const name = cstring(h, 0, 100);
  const prefix = magic === 'ustar\0' ? cstring(h, 345, 155) : EMPTY;
  let size: number;
  try {
    size = Number(readNumber(h, 124, 12));
  } catch (err) {
    throw new TarFormatError(`tar: header at byte ${at}: ${(err as Error).message}`);
  }
  if (!Number.isSafeInteger(size) || size < 0) throw new TarFormatError(`tar: header at byte ${at}: bad size`);
  return {
    name: prefix.length > 0 ? Buffer.concat([prefix, SLASH, name]) : name,
    linkname: cstring(h, 157, 100),
    typeflag: h.subarray(156, 157).toString('latin1'),
    mode: Number(readNumber(h, 100, 8)),
    uid: Number(readNumber(h, 108, 8)),
    gid: Number(readNumber(h, 116, 8)),
    size,
    mtime: readNumber(h, 136, 12),
  };
}

function isZero(b: Buffer): boolean {
  for (const c of b) if (c !== 0) return false;
  return true;
}

async function readSparseMap(src: ByteSource, available: number, at: number): Promise<{ segments: SparseSegment[]; bytes: number }> {
  const numbers: number[] = [];
  let wanted = -1;
  let partial = '';
  let bytes = 0;
  while (wanted < 0 || numbers.length < 1 + 2 * wanted) {
    if (bytes + BLOCK > available || bytes >= MAX_META_BYTES) throw new TarFormatError(`tar: entry at byte ${at}: sparse map runs past its data`);
    const text = partial + (await src.read(BLOCK, 'sparse map')).toString('latin1');
    bytes += BLOCK;
    const lines = text.split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (wanted >= 0 && numbers.length >= 1 + 2 * wanted) break;
      if (!/^\d+$/.test(line)) throw new TarFormatError(`tar: entry at byte ${at}: bad sparse map`);
      numbers.push(Number(line));
      if (numbers.length === 1) wanted = numbers[0];
    }
    if (!/^\d*$/.test(partial.replace(/\0+$/, ''))) throw new TarFormatError(`tar: entry at byte ${at}: bad sparse map`);
  }
  const segments: SparseSegment[] = [];
  for (let i = 0; i < wanted; i++) segments.push({ offset: numbers[1 + 2 * i], size: numbers[2 + 2 * i] });
  return { segments, bytes };
}

/** Exact reads over an async iterable of chunks, with the offset consumed so far. */
class ByteSource {
  offset = 0;
  private pending: Buffer = EMPTY;
  private readonly iterator: AsyncIterator<Buffer | string> | Iterator<Buffer | string>;
  private ended = false;

  constructor(input: AsyncIterable<Buffer | string> | Iterable<Buffer | string>) {
    this.iterator = Symbol.asyncIterator in input ? input[Symbol.asyncIterator]() : input[Symbol.iterator]();
  }

  private async more(): Promise<boolean> {
    if (this.ended) return false;
    const next = await this.iterator.next();
    if (next.done) {
      this.ended = true;
      return false;
    }
    const chunk = typeof next.value === 'string' ? Buffer.from(next.value, 'latin1') : next.value;
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    return true;
  }

  /** n bytes, or null at a clean end (nothing left); a partial read is an error. */
  async readMaybe(n: number): Promise<Buffer | null> {
    while (this.pending.length < n) {
      if (!(await this.more())) {
        if (this.pending.length === 0) return null;
        throw new TarFormatError(`tar: truncated at byte ${this.offset + this.pending.length}`);
      }
    }
    const out = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    this.offset += n;
    return out;
  }

  async read(n: number, what: string): Promise<Buffer> {
    const out = await this.readMaybe(n);
    if (out === null) throw new TarFormatError(`tar: truncated in a ${what} at byte ${this.offset}`);
    return out;
  }

  /** Between 1 and n bytes (n > 0), as they arrived. */
  async upTo(n: number): Promise<Buffer> {
    if (this.pending.length === 0 && !(await this.more())) throw new TarFormatError(`tar: truncated in entry data at byte ${this.offset}`);
    const take = Math.min(n, this.pending.length);
    const out = this.pending.subarray(0, take);
    this.pending = this.pending.subarray(take);
    this.offset += take;
    return out;
  }

  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      if (this.pending.length === 0 && !(await this.more())) throw new TarFormatError(`tar: truncated at byte ${this.offset}`);
      const take = Math.min(left, this.pending.length);
      this.pending = this.pending.subarray(take);
      this.offset += take;
      left -= take;
    }
  }
}
