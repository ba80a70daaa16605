/**
 * Block compression. zstd was chosen by measurement (bench/buffer.ts prints
 * both): on the realistic event mix it stores about half the bytes of lz4 at a
 * comparable compression speed, and it runs on libuv's thread pool, off the
 * event loop. @mongodb-js/zstd 1.x is a napi-rs package whose binaries come in
 * per-platform npm packages (later majors download from GitHub at install).
 */
import { compress as zstdCompress, decompress as zstdDecompress } from '@mongodb-js/zstd';
import { Codec } from './frame';

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
  const raw = codec === Codec.zstd ? await zstdDecompress(data) : data;
  if (raw.length !== rawLen) throw new Error(`block decompressed to ${raw.length} bytes, header says ${rawLen}`);
  return raw;
}
