/**
 * Block compression. zstd was chosen by measurement (bench/buffer.ts prints
 * both): on the realistic event mix it stores about half the bytes of lz4 at a
 * comparable compression speed, and it runs on libuv's thread pool, off the
 * event loop. @mongodb-js/zstd 1.x is a napi-rs package whose binaries come in
 * per-platform npm packages (later majors download from GitHub at install).
 */
import { compress as zstdCompress, decompress as zstdDecompress } from '@mongodb-js/zstd';
import { Codec, MAX_PAYLOAD_BYTES } from './frame';

export interface Compressed {
  codec: Codec;
  data: Buffer;
}

export async function compressPayload(raw: Buffer): Promise<Compressed> {
  const data = await zstdCompress(raw);
  // Tiny blocks can grow under compression: store those as they are.
  return data.length < raw.length ? { codec: Codec.zstd, data } : { codec: Codec.none, data: raw };
}

export async function decompressPayload(codec: Codec, data: Buffer, rawLen: number): Promise<Buffer> {
  if (codec === Codec.zstd) {
    // The package has no output limit and our frames do not declare their size:
    // bound what the frame can produce from its block headers before decompressing.
    const most = zstdOutputBound(data);
    if (most > MAX_ZSTD_OUTPUT_BYTES) throw new Error(`zstd data could decompress to ${most} bytes, more than a block can hold`);
  }
  const raw = codec === Codec.zstd ? await zstdDecompress(data) : data;
  if (raw.length !== rawLen) throw new Error(`block decompressed to ${raw.length} bytes, header says ${rawLen}`);
  return raw;
}

/**
 * Blocks of a compressed frame decompress to at most 128 KiB each, so a
 * legitimate payload's bound stays near its size even when the compressor
 * splits blocks; a decompression bomb (thousands of tiny RLE or compressed
 * blocks) is far above it.
 */
const MAX_ZSTD_OUTPUT_BYTES = 2 * MAX_PAYLOAD_BYTES;
const ZSTD_MAGIC = 0xfd2fb528;
const ZSTD_BLOCK_MAX = 128 * 1024;

/** The most bytes `data` (zstd frames, RFC 8878) can decompress to; Infinity when it is not well-formed. */
export function zstdOutputBound(data: Buffer): number {
  let p = 0;
  let total = 0;
  while (p < data.length) {
    if (p + 4 > data.length) return Infinity;
    const magic = data.readUInt32LE(p);
    p += 4;
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      // Skippable frame: no output.
      if (p + 4 > data.length) return Infinity;
      p += 4 + data.readUInt32LE(p);
      continue;
    }
    if (magic !== ZSTD_MAGIC || p >= data.length) return Infinity;
    const fhd = data[p++];
    const fcsFlag = fhd >> 6;
    const singleSegment = (fhd >> 5) & 1;
    const checksum = (fhd >> 2) & 1;
    const dictIdBytes = [0, 1, 2, 4][fhd & 3];
    const fcsBytes = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag];
    p += (singleSegment ? 0 : 1) + dictIdBytes + fcsBytes;
    for (;;) {
      if (p + 3 > data.length) return Infinity;
      const header = data.readUIntLE(p, 3);
      p += 3;
      const last = header & 1;
      const type = (header >> 1) & 3;
      const size = header >>> 3;
      if (type === 0) {
        p += size; // raw: size bytes in, size bytes out
        total += size;
      } else if (type === 1) {
        p += 1; // RLE: one byte in, size bytes out
        total += size;
      } else if (type === 2) {
        if (size > ZSTD_BLOCK_MAX) return Infinity;
        p += size;
        total += ZSTD_BLOCK_MAX;
      } else {
        return Infinity;
      }
      if (p > data.length) return Infinity;
      if (last) break;
    }
    p += checksum ? 4 : 0;
  }
  return total;
}
