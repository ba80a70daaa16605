/**
 * Block frames: the unit of the segment files (see FORMAT.md). Each frame
 * carries its own checksum and a summary (time range, per-type counts,
 * containers) so readers can skip blocks without decompressing them.
 */
import { crc32 } from 'node:zlib';
import { EVENT_TYPES } from '../sensor/events';

export const SEGMENT_MAGIC = Buffer.from('AMBERSEG', 'latin1');
export const SEGMENT_FORMAT_VERSION = 1;
export const SEGMENT_HEADER_BYTES = 16;

/** "ABLK": lets a reader resynchronise after a damaged frame. */
export const FRAME_MAGIC = Buffer.from('ABLK', 'latin1');
export const FRAME_PREFIX_BYTES = 16;
const HEADER_FIXED_BYTES = 28;
/** Container ids are summarised by their first 12 characters (what `docker ps` shows). */
export const CONTAINER_SUMMARY_CHARS = 12;
/** More distinct containers than this in one block: the summary says "any". */
export const MAX_SUMMARY_CONTAINERS = 255;
const CONTAINERS_NOT_SUMMARISED = 0xffff;
/**
 * The format's real maxima, checked before anything is allocated or read, so a
 * damaged or planted length field cannot make a reader allocate or scan much:
 * a header holds at most 255 type counters and 255 container names of 255 bytes;
 * a writer never writes a payload (compressed or not) above MAX_PAYLOAD_BYTES
 * (blocks close at blockBytes, at most MAX_BLOCK_BYTES, plus one event).
 */
export const MAX_HEADER_BYTES = HEADER_FIXED_BYTES + 4 * 255 + 2 + MAX_SUMMARY_CONTAINERS * 256;
export const MAX_BLOCK_BYTES = 16 * 1024 * 1024;
export const MAX_PAYLOAD_BYTES = 32 * 1024 * 1024;

export const Codec = { none: 0, zstd: 1 } as const;
export type Codec = (typeof Codec)[keyof typeof Codec];

export interface BlockSummary {
  count: number;
  /** Length of the uncompressed msgpack payload. */
  rawLen: number;
  minTs: number;
  maxTs: number;
  /** Events per type, in EVENT_TYPES order. */
  typeCounts: number[];
  /** Distinct containerId prefixes ("" = host), or null when there were too many to list. */
  containers: string[] | null;
}

export interface BlockInfo extends BlockSummary {
  codec: Codec;
  /** Offset of the frame in its segment file. */
  offset: number;
  /** Whole frame: prefix + header + payload. */
  frameLen: number;
}

export function segmentHeader(): Buffer {
  const header = Buffer.alloc(SEGMENT_HEADER_BYTES);
  SEGMENT_MAGIC.copy(header, 0);
  header.writeUInt32LE(SEGMENT_FORMAT_VERSION, 8);
  return header;
}

export function isSegmentHeader(buf: Buffer): boolean {
  return (
    buf.length >= SEGMENT_HEADER_BYTES &&
    buf.subarray(0, 8).equals(SEGMENT_MAGIC) &&
    buf.readUInt32LE(8) === SEGMENT_FORMAT_VERSION
  );
}

/** Prefix + header of a frame; the payload is written right after it. */
export function encodeFrameHead(summary: BlockSummary, codec: Codec, payload: Buffer): Buffer {
  const containers = summary.containers;
  const names = containers ? containers.map((c) => Buffer.from(c, 'utf8')) : [];
  const typeSlots = summary.typeCounts.length;
  let headerLen = HEADER_FIXED_BYTES + 4 * typeSlots + 2;
  for (const name of names) headerLen += 1 + name.length;

  const head = Buffer.alloc(FRAME_PREFIX_BYTES + headerLen);
  FRAME_MAGIC.copy(head, 0);
  head.writeUInt32LE(headerLen, 4);
  head.writeUInt32LE(payload.length, 8);
  let p = FRAME_PREFIX_BYTES;
  head[p] = codec;
  head[p + 1] = 0;
  head[p + 2] = typeSlots;
  head[p + 3] = 0;
  head.writeUInt32LE(summary.count, p + 4);
  head.writeUInt32LE(summary.rawLen, p + 8);
  head.writeDoubleLE(summary.minTs, p + 12);
  head.writeDoubleLE(summary.maxTs, p + 20);
  p += HEADER_FIXED_BYTES;
  for (const n of summary.typeCounts) {
    head.writeUInt32LE(n, p);
    p += 4;
  }
  head.writeUInt16LE(containers ? names.length : CONTAINERS_NOT_SUMMARISED, p);
  p += 2;
  for (const name of names) {
    head[p++] = name.length;
    name.copy(head, p);
    p += name.length;
  }
  const crc = crc32(payload, crc32(head.subarray(FRAME_PREFIX_BYTES)));
  head.writeUInt32LE(crc, 12);
  return head;
}

export interface FramePrefix {
  headerLen: number;
  payloadLen: number;
  crc: number;
  frameLen: number;
}

/** Reads the 16-byte prefix; null when it cannot be the start of a frame. */
export function parseFramePrefix(buf: Buffer, at: number): FramePrefix | null {
  if (buf.length - at < FRAME_PREFIX_BYTES) return null;
  if (buf.compare(FRAME_MAGIC, 0, 4, at, at + 4) !== 0) return null;
  const headerLen = buf.readUInt32LE(at + 4);
  const payloadLen = buf.readUInt32LE(at + 8);
  if (headerLen < HEADER_FIXED_BYTES + 2 || headerLen > MAX_HEADER_BYTES || payloadLen > MAX_PAYLOAD_BYTES) {
    return null;
  }
  return { headerLen, payloadLen, crc: buf.readUInt32LE(at + 12), frameLen: FRAME_PREFIX_BYTES + headerLen + payloadLen };
}

/**
 * Checks a whole frame (prefix at `at`, frame fully inside `buf`) and returns its
 * description, or null when the checksum or the header does not hold.
 */
export function verifyFrame(buf: Buffer, at: number, prefix: FramePrefix, fileOffset: number): BlockInfo | null {
  const headerStart = at + FRAME_PREFIX_BYTES;
  const payloadStart = headerStart + prefix.headerLen;
  const end = payloadStart + prefix.payloadLen;
  if (end > buf.length) return null;
  const crc = crc32(buf.subarray(payloadStart, end), crc32(buf.subarray(headerStart, payloadStart)));
  if (crc !== prefix.crc) return null;
  return parseFrameHeader(buf.subarray(headerStart, payloadStart), fileOffset, prefix.frameLen);
}

/** Parses a frame's header body (the bytes after the prefix); null when malformed. */
export function parseFrameHeader(header: Buffer, offset: number, frameLen: number): BlockInfo | null {
  if (header.length < HEADER_FIXED_BYTES + 2) return null;
  const codec = header[0];
  if (codec !== Codec.none && codec !== Codec.zstd) return null;
  if (header.readUInt32LE(8) > MAX_PAYLOAD_BYTES) return null;
  const typeSlots = header[2];
  let p = HEADER_FIXED_BYTES;
  if (header.length < p + 4 * typeSlots + 2) return null;
  const typeCounts = new Array<number>(EVENT_TYPES.length).fill(0);
  for (let i = 0; i < typeSlots; i++, p += 4) {
    if (i < typeCounts.length) typeCounts[i] = header.readUInt32LE(p);
  }
  const nContainers = header.readUInt16LE(p);
  p += 2;
  let containers: string[] | null = null;
  if (nContainers !== CONTAINERS_NOT_SUMMARISED) {
    containers = [];
    for (let i = 0; i < nContainers; i++) {
      const len = header[p++];
      if (len === undefined || p + len > header.length) return null;
      containers.push(header.toString('utf8', p, p + len));
      p += len;
    }
  }
  return {
    codec: codec as Codec,
    offset,
    frameLen,
    count: header.readUInt32LE(4),
    rawLen: header.readUInt32LE(8),
    minTs: header.readDoubleLE(12),
    maxTs: header.readDoubleLE(20),
    typeCounts,
    containers,
  };
}
