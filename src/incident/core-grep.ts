/**
 * Searching an ELF core (ours, or one the kernel wrote) for bytes: `amber
 * inspect BUNDLE --grep TEXT`. The core may be gigabytes and may come from
 * anywhere, so it is streamed a chunk at a time (a match across a chunk border
 * is found: each chunk is searched with the previous one's last
 * needle.length - 1 bytes in front) and every header is bounds-checked.
 */
import type { promises as fsp } from 'node:fs';
import { openRegular } from '../buffer/datadir';

const PT_LOAD = 1;
const PT_NOTE = 4;
const PN_XNUM = 0xffff;
const NT_PRSTATUS = 1;
const NT_PRPSINFO = 3;
const NT_FILE = 0x46494c45;
const MAX_PHDRS = 1 << 20;
const MAX_NOTES_BYTES = 64 << 20;
const CHUNK = 4 << 20;
const LINE = 16;

export interface CoreRegion {
  /** "0x…" */
  start: string;
  end: string;
  /** From the segment's flags: "rwx" letters, "-" for those not set. */
  perms: string;
  /** The mapped file (NT_FILE), or the name the maps gave it ([heap], [stack]) when given; "" if unknown. */
  path: string;
}

export interface CoreHit {
  pid: number;
  comm: string;
  /** "0x…": the match's address in the process. */
  address: string;
  region: CoreRegion;
  /** The match's offset in the core file. */
  offset: number;
  /** hexdump -C style lines around the match, addressed by process address. */
  excerpt: string[];
}

export interface GrepOptions {
  /** Stop after this many hits (default 1000). */
  maxHits?: number;
  /** Lines of excerpt before and after the match's lines (default 2). */
  contextLines?: number;
  /** Names for mappings without a file (the maps JSON's regions), matched by start address. */
  regions?: ReadonlyArray<{ start: string; path: string }>;
}

export class CoreFormatError extends Error {
  override name = 'CoreFormatError';
}

interface Segment {
  vaddr: bigint;
  memsz: bigint;
  offset: number;
  filesz: number;
  flags: number;
}

export interface CoreLayout {
  pid: number;
  comm: string;
  segments: Segment[];
  /** NT_FILE: mapping start address (hex) to path. */
  files: Map<string, string>;
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;

async function readAt(fh: fsp.FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buf.subarray(0, done);
}

/** Reads the ELF header, program headers and notes of a core: what the search and its report need. */
export async function readCoreLayout(fh: fsp.FileHandle): Promise<CoreLayout> {
  const size = (await fh.stat()).size;
  const eh = await readAt(fh, 0, 64);
  if (eh.length < 64 || eh.readUInt32BE(0) !== 0x7f454c46) throw new CoreFormatError('not an ELF file');
  if (eh[4] !== 2 || eh[5] !== 1) throw new CoreFormatError('not a 64-bit little-endian ELF file');
  if (eh.readUInt16LE(16) !== 4) throw new CoreFormatError(`not a core file (ELF type ${eh.readUInt16LE(16)})`);
  const phoff = Number(eh.readBigUInt64LE(32));
  const phentsize = eh.readUInt16LE(54);
  let phnum = eh.readUInt16LE(56);
  if (phentsize < 56) throw new CoreFormatError(`program header entries of ${phentsize} bytes`);
  if (phnum === PN_XNUM) {
    // extended numbering: the count is in section header 0's sh_info
    const sh = await readAt(fh, Number(eh.readBigUInt64LE(40)), 64);
    if (sh.length < 64) throw new CoreFormatError('truncated section header 0');
    phnum = sh.readUInt32LE(44);
  }
  if (phnum > MAX_PHDRS || phoff + phnum * phentsize > size) throw new CoreFormatError(`${phnum} program headers do not fit the file`);
  const ph = await readAt(fh, phoff, phnum * phentsize);
  const segments: Segment[] = [];
  const notes: Buffer[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = i * phentsize;
    const type = ph.readUInt32LE(at);
    const offset = Number(ph.readBigUInt64LE(at + 8));
    const filesz = Number(ph.readBigUInt64LE(at + 32));
    if (type === PT_LOAD) {
      segments.push({
        flags: ph.readUInt32LE(at + 4),
        offset,
        vaddr: ph.readBigUInt64LE(at + 16),
        // only what the file holds can be searched
        filesz: Math.max(0, Math.min(filesz, size - offset)),
        memsz: ph.readBigUInt64LE(at + 40),
      });
    } else if (type === PT_NOTE) {
      if (filesz > MAX_NOTES_BYTES || offset + filesz > size) throw new CoreFormatError(`a note segment of ${filesz} bytes does not fit`);
      notes.push(await readAt(fh, offset, filesz));
    }
  }
  const layout: CoreLayout = { pid: 0, comm: '', segments, files: new Map() };
  for (const buf of notes) parseNotes(buf, layout);
  return layout;
}

function parseNotes(buf: Buffer, layout: CoreLayout): void {
  const align4 = (n: number): number => (n + 3) & ~3;
  for (let at = 0; at + 12 <= buf.length; ) {
    const namesz = buf.readUInt32LE(at);
    const descsz = buf.readUInt32LE(at + 4);
    const type = buf.readUInt32LE(at + 8);
    const name = buf.subarray(at + 12, at + 12 + Math.max(0, namesz - 1)).toString('latin1');
    const descAt = at + 12 + align4(namesz);
    if (descAt + descsz > buf.length) return;
    const desc = buf.subarray(descAt, descAt + descsz);
    at = descAt + align4(descsz);
    if (name !== 'CORE') continue;
    if (type === NT_PRPSINFO && desc.length >= 136) {
      layout.pid = desc.readInt32LE(24);
      layout.comm = cString(desc.subarray(40, 56));
    } else if (type === NT_PRSTATUS && desc.length >= 36 && layout.pid === 0) {
      layout.pid = desc.readInt32LE(32);
    } else if (type === NT_FILE && desc.length >= 16) {
      const count = Number(desc.readBigUInt64LE(0));
      let names = 16 + count * 24;
      if (count > MAX_PHDRS || names > desc.length) continue;
      for (let i = 0; i < count; i++) {
        const end = desc.indexOf(0, names);
        if (end < 0) break;
        layout.files.set(hex(desc.readBigUInt64LE(16 + i * 24)), desc.subarray(names, end).toString('utf8'));
        names = end + 1;
      }
    }
  }
}

function cString(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.subarray(0, end < 0 ? buf.length : end).toString('utf8');
}

function permsOf(flags: number): string {
  return `${flags & 4 ? 'r' : '-'}${flags & 2 ? 'w' : '-'}${flags & 1 ? 'x' : '-'}`;
}

/** hexdump -C lines for `data`, which starts at process address `address` (a multiple of 16). */
export function hexdumpLines(data: Buffer, address: bigint): string[] {
  const lines: string[] = [];
  for (let at = 0; at < data.length; at += LINE) {
    const row = data.subarray(at, at + LINE);
    const bytes: string[] = [];
    for (let i = 0; i < LINE; i++) bytes.push(i < row.length ? row[i].toString(16).padStart(2, '0') : '  ');
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    const addr = (address + BigInt(at)).toString(16).padStart(16, '0');
    lines.push(`${addr}  ${bytes.slice(0, 8).join(' ')}  ${bytes.slice(8).join(' ')}  |${ascii}|`);
  }
  return lines;
}

/**
 * Every occurrence of needle in the memory a core holds (overlapping ones
 * too), in address order per segment, up to maxHits.
 */
export async function* grepCore(corePath: string, needle: Buffer | string, options: GrepOptions = {}): AsyncGenerator<CoreHit> {
  const pattern = typeof needle === 'string' ? Buffer.from(needle, 'utf8') : needle;
  if (pattern.length === 0) throw new CoreFormatError('the search text is empty');
  if (pattern.length > CHUNK) throw new CoreFormatError(`the search text is longer than ${CHUNK} bytes`);
  const maxHits = options.maxHits ?? 1000;
  const context = options.contextLines ?? 2;
  const names = new Map((options.regions ?? []).map((r) => [r.start, r.path]));
  const fh = await openRegular(corePath);
  try {
    const layout = await readCoreLayout(fh);
    let hits = 0;
    for (const seg of layout.segments) {
      if (seg.filesz === 0) continue;
      const start = hex(seg.vaddr);
      const region: CoreRegion = {
        start,
        end: hex(seg.vaddr + seg.memsz),
        perms: permsOf(seg.flags),
        path: layout.files.get(start) ?? names.get(start) ?? '',
      };
      let carry: Buffer = Buffer.alloc(0);
      for (let pos = 0; pos < seg.filesz; ) {
        const chunk = await readAt(fh, seg.offset + pos, Math.min(CHUNK, seg.filesz - pos));
        if (chunk.length === 0) break;
        const window = carry.length > 0 ? Buffer.concat([carry, chunk]) : chunk;
        const windowStart = pos - carry.length; // segment offset of window[0]
        for (let i = window.indexOf(pattern); i >= 0; i = window.indexOf(pattern, i + 1)) {
          const at = windowStart + i;
          yield {
            pid: layout.pid,
            comm: layout.comm,
            address: hex(seg.vaddr + BigInt(at)),
            region,
            offset: seg.offset + at,
            excerpt: await excerpt(fh, seg, at, pattern.length, context),
          };
          if (++hits >= maxHits) return;
        }
        pos += chunk.length;
        carry = window.subarray(Math.max(0, window.length - (pattern.length - 1)));
      }
    }
  } finally {
    await fh.close();
  }
}

async function excerpt(fh: fsp.FileHandle, seg: Segment, at: number, length: number, context: number): Promise<string[]> {
  // whole 16-byte lines of process addresses, clipped to what the segment holds
  const base = Number(seg.vaddr % BigInt(LINE));
  const from = Math.max(0, Math.floor((at + base) / LINE) * LINE - base - context * LINE);
  const to = Math.min(seg.filesz, Math.ceil((at + length + base) / LINE) * LINE - base + context * LINE);
  const data = await readAt(fh, seg.offset + from, to - from);
  return hexdumpLines(data, seg.vaddr + BigInt(from));
}

/** A hit for people, like checkpointctl memparse: where it is, then the bytes around it. */
export function formatHit(hit: CoreHit): string {
  const where = `${hit.region.start}-${hit.region.end} ${hit.region.perms}${hit.region.path ? ` ${hit.region.path}` : ''}`;
  return [`pid ${hit.pid} (${hit.comm}) at ${hit.address} in ${where}, core offset ${hit.offset}`, ...hit.excerpt].join('\n');
}
