/**
 * Segment files: naming, scanning/recovery, the sidecar block index, and
 * reading one block back. Scanning trusts nothing but magic numbers and
 * checksums; the sidecar is only a shortcut for a sealed segment whose size it
 * matches, and every block it points to is checksummed again when read.
 */
import { crc32 } from 'node:zlib';
import { promises as fsp } from 'node:fs';
import { decodeBlockPayload } from './block-codec';
import { decompressPayload } from './compression';
import { NotRegularFileError, openRegular, readRegular, writeFileAtomic } from './datadir';
import { nativeFiles } from './lock';
import {
  type BlockInfo,
  FRAME_MAGIC,
  MAX_HEADER_BYTES,
  MAX_PAYLOAD_BYTES,
  SEGMENT_MAGIC,
  SEGMENT_FORMAT_VERSION,
  segmentHeader,
  FRAME_PREFIX_BYTES,
  isSegmentHeader,
  parseFrameHeader,
  parseFramePrefix,
  SEGMENT_HEADER_BYTES,
  verifyFrame,
} from './frame';
import type { AmberEvent } from '../sensor/events';

export const SEGMENTS_DIR = 'segments';
const SEGMENT_RE = /^segment-(\d{16})\.amb$/;
const INDEX_MAGIC = Buffer.from('AMBERIDX', 'latin1');
const INDEX_VERSION = 1;
/** Scanning reads the file in windows of this size (frames larger than it are checksummed in pieces). */
const SCAN_WINDOW_BYTES = 4 * 1024 * 1024;
/** A sidecar of the largest segment of the largest blocks stays far below this. */
const MAX_INDEX_BYTES = 64 * 1024 * 1024;

export function segmentFileName(seq: number): string {
  return `segment-${String(seq).padStart(16, '0')}.amb`;
}

export function indexFileName(segmentFile: string): string {
  return segmentFile.replace(/\.amb$/, '.idx');
}

/** The names in `dir`; none when it does not exist (yet). */
export async function readdirIfExists(dir: string): Promise<string[]> {
  try {
    return await fsp.readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** Segment sequence numbers found in `dir`, ascending. */
export async function listSegments(dir: string): Promise<number[]> {
  const names = await readdirIfExists(dir);
  const seqs: number[] = [];
  for (const name of names) {
    const m = SEGMENT_RE.exec(name);
    if (m) seqs.push(Number(m[1]));
  }
  return seqs.sort((a, b) => a - b);
}

export interface DamagedRange {
  offset: number;
  length: number;
}

export interface ScanResult {
  /**
   * ok; torn: created but its header never (fully) written, holding nothing, safe to discard;
   * foreign: a segment of a newer format version, never to be touched;
   * damaged: the header does not hold (not a newer version: ordinary damage), frames are still scanned.
   */
  header: 'ok' | 'torn' | 'foreign' | 'damaged';
  blocks: BlockInfo[];
  /** Each block's frame head (prefix + header), for its sidecar index. */
  heads: Buffer[];
  /** End of the last valid frame: where a writer truncates a torn tail. */
  validEnd: number;
  /** Bytes after the last valid frame that do not form a frame (a torn or damaged tail). */
  tailBytes: number;
  /** Damaged stretches between valid frames (and a damaged header), skipped. */
  damaged: DamagedRange[];
}

/** Seeks past sparse holes when the addon is there; without it a scan reads the zeros. */
function dataFrom(fd: number, offset: number): number {
  try {
    return nativeFiles().seekData(fd, offset);
  } catch {
    return offset;
  }
}

/** A header a newer Amber wrote: the magic intact, a plausible higher version. */
function isNewerFormat(head: Buffer): boolean {
  if (!head.subarray(0, 8).equals(SEGMENT_MAGIC)) return false;
  const version = head.readUInt32LE(8);
  return version > SEGMENT_FORMAT_VERSION && version <= 0xffff;
}

/**
 * Walks every frame of a segment file, verifying each checksum. A damaged frame
 * is skipped by searching for the next frame that verifies; what cannot be
 * resynchronised at the end is the torn tail. Memory is bounded by the scan
 * window whatever the file claims: lengths are checked against the format's
 * maxima, large frames are checksummed in pieces, sparse holes are skipped.
 * Throws NotRegularFileError for anything but a regular file (never blocks on a FIFO).
 */
export async function scanSegment(file: string): Promise<ScanResult> {
  const fh = await openRegular(file);
  try {
    const size = (await fh.stat()).size;
    const result: ScanResult = { header: 'torn', blocks: [], heads: [], validEnd: 0, tailBytes: size, damaged: [] };
    const head = Buffer.alloc(SEGMENT_HEADER_BYTES);
    const { bytesRead } = await fh.read(head, 0, SEGMENT_HEADER_BYTES, 0);
    const expected = segmentHeader();
    const neverWritten = head.subarray(0, bytesRead).every((b, i) => b === 0 || b === expected[i]);
    if (size <= SEGMENT_HEADER_BYTES && neverWritten && !(bytesRead === SEGMENT_HEADER_BYTES && isSegmentHeader(head))) {
      return result; // nothing past the header: no event can be in it
    }
    if (isNewerFormat(head)) {
      result.header = 'foreign';
      return result;
    }
    result.header = isSegmentHeader(head) ? 'ok' : 'damaged';
    result.validEnd = SEGMENT_HEADER_BYTES;
    result.tailBytes = Math.max(0, size - SEGMENT_HEADER_BYTES);

    let window = Buffer.alloc(0);
    let windowStart = 0;
    const load = async (offset: number, minBytes: number): Promise<boolean> => {
      if (offset >= windowStart && offset + minBytes <= windowStart + window.length) return true;
      const want = Math.min(Math.max(SCAN_WINDOW_BYTES, minBytes), size - offset);
      if (want < minBytes) return false;
      window = Buffer.allocUnsafe(want);
      const read = await fh.read(window, 0, want, offset);
      window = window.subarray(0, read.bytesRead);
      windowStart = offset;
      return read.bytesRead >= minBytes;
    };
    /** CRC-32 of [from, from+length) read in window-sized pieces (a frame larger than the window). */
    const crcOf = async (from: number, length: number, crc: number): Promise<number | null> => {
      const chunk = Buffer.allocUnsafe(Math.min(length, SCAN_WINDOW_BYTES));
      for (let done = 0; done < length; ) {
        const n = Math.min(chunk.length, length - done);
        const { bytesRead: got } = await fh.read(chunk, 0, n, from + done);
        if (got !== n) return null;
        crc = crc32(chunk.subarray(0, n), crc);
        done += n;
      }
      return crc;
    };
    let lastHead = Buffer.alloc(0);
    const frameAt = async (offset: number): Promise<BlockInfo | null> => {
      if (!(await load(offset, FRAME_PREFIX_BYTES))) return null;
      const prefix = parseFramePrefix(window, offset - windowStart);
      if (!prefix || offset + prefix.frameLen > size) return null;
      const headLen = FRAME_PREFIX_BYTES + prefix.headerLen;
      if (prefix.frameLen <= SCAN_WINDOW_BYTES) {
        if (!(await load(offset, prefix.frameLen))) return null;
        const at = offset - windowStart;
        const block = verifyFrame(window, at, prefix, offset);
        if (block) lastHead = Buffer.from(window.subarray(at, at + headLen));
        return block;
      }
      // Large frame: parse the header first (cheap rejection), then checksum the payload in pieces.
      if (!(await load(offset, headLen))) return null;
      const at = offset - windowStart;
      const headBytes = Buffer.from(window.subarray(at, at + headLen));
      const block = parseFrameHeader(headBytes.subarray(FRAME_PREFIX_BYTES), offset, prefix.frameLen);
      if (!block) return null;
      const crc = await crcOf(offset + headLen, prefix.payloadLen, crc32(headBytes.subarray(FRAME_PREFIX_BYTES)));
      if (crc !== prefix.crc) return null;
      lastHead = headBytes;
      return block;
    };
    /** The next frame at or after `from` that verifies, or null. */
    const resync = async (from: number): Promise<{ offset: number; block: BlockInfo } | null> => {
      let at = from;
      while (at + FRAME_PREFIX_BYTES <= size) {
        const data = dataFrom(fh.fd, at);
        if (data < 0) return null; // only a hole follows
        at = Math.max(at, data);
        if (!(await load(at, FRAME_PREFIX_BYTES))) return null;
        const found = window.indexOf(FRAME_MAGIC, at - windowStart);
        if (found < 0) {
          // The magic may straddle two windows: continue 3 bytes before this one's end.
          at = Math.max(at + 1, windowStart + window.length - (FRAME_MAGIC.length - 1));
          continue;
        }
        const offset = windowStart + found;
        const block = await frameAt(offset);
        if (block) return { offset, block };
        at = offset + 1;
      }
      return null;
    };

    let offset = SEGMENT_HEADER_BYTES;
    if (result.header === 'damaged') {
      // The header is damage, not a format: read what frames follow it.
      const next = await resync(offset);
      result.damaged.push({ offset: 0, length: next ? next.offset : size });
      if (!next) {
        result.validEnd = SEGMENT_HEADER_BYTES;
        result.tailBytes = 0;
        return result;
      }
      offset = next.offset;
    }
    while (offset < size) {
      const block = await frameAt(offset);
      if (block) {
        result.blocks.push(block);
        result.heads.push(lastHead);
        offset += block.frameLen;
        result.validEnd = offset;
        continue;
      }
      const next = await resync(offset + 1);
      if (!next) break;
      result.damaged.push({ offset, length: next.offset - offset });
      offset = next.offset;
      result.blocks.push(next.block);
      result.heads.push(lastHead);
      offset += next.block.frameLen;
      result.validEnd = offset;
    }
    result.tailBytes = size - result.validEnd;
    return result;
  } finally {
    await fh.close();
  }
}

/*
 * Sidecar index (<segment>.idx), written when a segment is sealed:
 *   "AMBERIDX" | u32 version | u32 block count | f64 segment size |
 *   per block: f64 offset | u32 frame length | frame prefix + header (as in the segment) |
 *   u32 CRC-32 of everything before it
 * Only the frame heads are copied, so the blocks are described exactly as the
 * segment describes them.
 */
export async function writeIndex(file: string, blocks: BlockInfo[], segmentSize: number, heads: Buffer[]): Promise<void> {
  const parts: Buffer[] = [];
  const top = Buffer.alloc(24);
  INDEX_MAGIC.copy(top, 0);
  top.writeUInt32LE(INDEX_VERSION, 8);
  top.writeUInt32LE(blocks.length, 12);
  top.writeDoubleLE(segmentSize, 16);
  parts.push(top);
  blocks.forEach((block, i) => {
    const entry = Buffer.alloc(12);
    entry.writeDoubleLE(block.offset, 0);
    entry.writeUInt32LE(heads[i].length, 8);
    parts.push(entry, heads[i]);
  });
  const body = Buffer.concat(parts);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32(body), 0);
  await writeFileAtomic(file, Buffer.concat([body, crc]));
}

/** The blocks a sidecar describes, or null when it is missing, damaged or for another size of the segment. */
export async function readIndex(file: string, segmentSize: number): Promise<BlockInfo[] | null> {
  let data: Buffer;
  try {
    data = await readRegular(file, MAX_INDEX_BYTES);
  } catch (err) {
    if (err instanceof NotRegularFileError) throw err; // not ours: the caller moves it aside
    return null;
  }
  if (data.length < 28 || !data.subarray(0, 8).equals(INDEX_MAGIC) || data.readUInt32LE(8) !== INDEX_VERSION) return null;
  if (crc32(data.subarray(0, data.length - 4)) !== data.readUInt32LE(data.length - 4)) return null;
  if (data.readDoubleLE(16) !== segmentSize) return null;
  const count = data.readUInt32LE(12);
  const blocks: BlockInfo[] = [];
  let p = 24;
  for (let i = 0; i < count; i++) {
    if (p + 12 > data.length - 4) return null;
    const offset = data.readDoubleLE(p);
    const headLen = data.readUInt32LE(p + 8);
    p += 12;
    const head = data.subarray(p, p + headLen);
    p += headLen;
    const prefix = parseFramePrefix(head, 0);
    if (!prefix || prefix.headerLen + FRAME_PREFIX_BYTES !== headLen) return null;
    const block = parseFrameHeader(head.subarray(FRAME_PREFIX_BYTES), offset, prefix.frameLen);
    if (!block || offset + block.frameLen > segmentSize) return null;
    blocks.push(block);
  }
  return blocks;
}

export class CorruptBlockError extends Error {}

/** Reads, verifies and decodes one block. Throws CorruptBlockError when the data does not hold. */
export async function readBlock(fh: fsp.FileHandle, block: BlockInfo): Promise<AmberEvent[]> {
  if (block.frameLen > FRAME_PREFIX_BYTES + MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES) throw new CorruptBlockError('block is longer than a block can be');
  const frame = Buffer.allocUnsafe(block.frameLen);
  const { bytesRead } = await fh.read(frame, 0, block.frameLen, block.offset);
  if (bytesRead !== block.frameLen) throw new CorruptBlockError('block is cut short');
  const prefix = parseFramePrefix(frame, 0);
  const verified = prefix && prefix.frameLen === block.frameLen ? verifyFrame(frame, 0, prefix, block.offset) : null;
  if (!verified) throw new CorruptBlockError('block checksum mismatch');
  const payload = frame.subarray(FRAME_PREFIX_BYTES + prefix!.headerLen);
  let events: AmberEvent[];
  try {
    events = decodeBlockPayload(await decompressPayload(verified.codec, payload, verified.rawLen));
  } catch (err) {
    throw new CorruptBlockError(`block does not decode: ${(err as Error).message}`);
  }
  checkEvents(events, verified.count);
  return events;
}

/**
 * A block whose checksum holds can still carry what no writer wrote (planted, or
 * written by a bug): every element must at least be an event object, or the
 * block is damaged as a whole (its other values are then not trusted either).
 */
function checkEvents(events: AmberEvent[], count: number): void {
  if (events.length !== count) throw new CorruptBlockError(`block holds ${events.length} events, its header says ${count}`);
  for (let i = 0; i < events.length; i++) {
    const ev = events[i] as unknown as Record<string, unknown> | null;
    if (typeof ev !== 'object' || ev === null || Array.isArray(ev) || typeof ev.type !== 'string' || typeof ev.ts !== 'number') {
      throw new CorruptBlockError(`block element ${i} is not an event`);
    }
  }
}
