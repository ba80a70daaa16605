import { open as openFile, readdir, readFile, stat, truncate, writeFile, appendFile } from 'node:fs/promises';
import * as path from 'node:path';
import { Packr, Unpackr } from 'msgpackr';
import { afterEach, describe, expect, it } from 'vitest';
import { EventBuffer } from '../../src/buffer';
import { BlockEncoder, decodeBlockPayload } from '../../src/buffer/block-codec';
import { Codec, encodeFrameHead, parseFramePrefix, verifyFrame } from '../../src/buffer/frame';
import { scanSegment, writeIndex } from '../../src/buffer/segment';
import type { AmberEvent } from '../../src/sensor/events';
import {
  CONTAINER_A,
  CONTAINER_B,
  collect,
  execEvent,
  KEEP_OLD,
  oneOfEach,
  openEvent,
  sequenceEvents,
  T0,
  tempDir,
} from '../helpers/buffer-events';

function encode(events: AmberEvent[]) {
  const encoder = new BlockEncoder(1024);
  for (const ev of events) encoder.append(ev);
  return encoder.finish();
}

describe('block encoding', () => {
  it('round-trips every event type and reports the block summary', () => {
    const events = [...oneOfEach(T0), execEvent(T0 + 9000, { containerId: '' }), openEvent(T0 + 10_000, { containerId: CONTAINER_B })];
    const { payload, summary } = encode(events);
    expect(decodeBlockPayload(payload)).toEqual(events);
    expect(summary).toEqual({
      count: 10,
      rawLen: payload.length,
      minTs: T0,
      maxTs: T0 + 10_000,
      // exec, exit, fork, open, connect, accept, dns, drift, alert
      typeCounts: [2, 1, 1, 2, 1, 1, 2, 0, 0],
      containers: ['', CONTAINER_A.slice(0, 12), CONTAINER_B.slice(0, 12)],
    });
  });

  it('keeps the optional raw bytes of non-UTF-8 paths and args, and every DNS answer type', () => {
    const events = [
      openEvent(T0, { path: '/tmp/\u{fffd}', pathRaw: Buffer.from([0x2f, 0x74, 0x6d, 0x70, 0x2f, 0xff]).toString('base64') }),
      execEvent(T0 + 1, { args: ['x', '\u{fffd}'], argsRaw: Buffer.from('x\0\xff\0', 'latin1').toString('base64'), script: '/tmp/s.sh' }),
      openEvent(T0 + 2, { pathTruncated: true }),
      ...oneOfEach(T0 + 3).filter((e) => e.type === 'dns').map((e) => ({
        ...e,
        answers: [
          { type: 'TXT', data: '"a\\"b" "\\255"' },
          { type: 'MX', data: '10 mx.example' },
          { type: '', data: 'old.example' },
        ],
        answersTruncated: true,
      })),
    ] as AmberEvent[];
    const { payload } = encode(events);
    expect(decodeBlockPayload(payload)).toEqual(events);
    expect(JSON.parse(JSON.stringify(decodeBlockPayload(payload)))).toEqual(events);
  });

  it('reads string DNS answers of blocks written before answers had types', () => {
    const old = { ...oneOfEach(T0)[6], answers: ['10.0.0.1', '2001:db8::1', 'cname.example'] };
    const payload = new Packr({ useRecords: false }).pack([old]);
    expect(decodeBlockPayload(payload)).toEqual([
      { ...old, answers: [{ type: 'A', data: '10.0.0.1' }, { type: 'AAAA', data: '2001:db8::1' }, { type: '', data: 'cname.example' }] },
    ]);
  });

  it('writes msgpackr records that a fresh Unpackr decodes standalone, like Packr output', () => {
    const events = Array.from({ length: 10 }, (_, i) => oneOfEach(T0 + i * 1e6)).flat();
    const { payload } = encode(events);
    expect(new Unpackr({ useRecords: true, mapsAsObjects: true }).unpack(payload)).toEqual(events);
    // Records keep repeated shapes small: well under plain maps.
    expect(payload.length).toBeLessThan(0.7 * new Packr({ useRecords: false }).pack(events).length);
    // A record definition ("d4 72 <id>") is written once per shape: 8 event shapes and the DNS answer here.
    expect(payload.toString('hex').match(/d4724[0-9a-f]/g)).toEqual(['d47240', 'd47241', 'd47242', 'd47243', 'd47244', 'd47245', 'd47246', 'd47247', 'd47248']);
  });

  it('keeps numbers exact around the msgpack size boundaries', () => {
    const values = [0, 1, 31, 63, 64, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, -1, -32, -33, -128, -(2 ** 31), -(2 ** 31) - 1, 0.5, 1.7e18 + 256];
    const events = values.map((v, i) => openEvent(T0 + i, { pid: v, ret: v === 0 ? 0 : -v }));
    expect(decodeBlockPayload(encode(events).payload)).toEqual(events);
  });

  it('keeps strings exact: empty, non-ASCII, long', () => {
    const paths = ['', 'é', '/tmp/\u{1F600}', 'x'.repeat(31), 'y'.repeat(32), 'z'.repeat(300), '/a'.repeat(40_000), '\u0000\u001b[31m'];
    const events = paths.map((p, i) => openEvent(T0 + i, { path: p }));
    expect(decodeBlockPayload(encode(events).payload)).toEqual(events);
  });

  it('writes events that are not exactly a contract shape as maps, losing nothing', () => {
    const extraField = { ...openEvent(T0), extra: { nested: [1, 'two', true, null] } };
    const missingField = execEvent(T0 + 1) as Partial<AmberEvent>;
    delete (missingField as { fileless?: boolean }).fileless;
    const wrongType = { ...openEvent(T0 + 2), pid: '100' };
    const unknownType = { ...openEvent(T0 + 3), type: 'ptrace' };
    const withBigint = { ...openEvent(T0 + 4), flags: 10n };
    const after = openEvent(T0 + 5);
    const events = [extraField, missingField, wrongType, unknownType, withBigint, after] as unknown as AmberEvent[];
    const decoded = decodeBlockPayload(encode(events).payload);
    expect(decoded).toEqual([extraField, missingField, wrongType, unknownType, { ...withBigint, flags: '10' }, after]);
  });
});

describe('frames', () => {
  const summary = { count: 1, rawLen: 3, minTs: T0, maxTs: T0, typeCounts: [1, 0, 0, 0, 0, 0, 0, 0, 0], containers: [''] };

  it('verify what they encode and reject any flipped byte', () => {
    const payload = Buffer.from([1, 2, 3]);
    const frame = Buffer.concat([encodeFrameHead(summary, Codec.none, payload), payload]);
    const prefix = parseFramePrefix(frame, 0)!;
    expect(verifyFrame(frame, 0, prefix, 100)).toEqual({ ...summary, codec: Codec.none, offset: 100, frameLen: frame.length });
    for (let i = 0; i < frame.length; i++) {
      const damaged = Buffer.from(frame);
      damaged[i] ^= 0x01;
      const p = parseFramePrefix(damaged, 0);
      expect(p && verifyFrame(damaged, 0, p, 100), `byte ${i}`).toBeFalsy();
    }
  });
});

describe('segment files', () => {
  let cleanup: (() => Promise<void>) | undefined;
  afterEach(async () => {
    await cleanup?.();
    cleanup = undefined;
  });

  /** A closed buffer with 600 sequence events in several blocks of one segment. */
  async function bufferWithBlocks() {
    const tmp = await tempDir();
    cleanup = tmp.cleanup;
    const events = sequenceEvents(0, 600);
    const buffer = await EventBuffer.open({ dataDir: tmp.dir, blockBytes: 8192, ...KEEP_OLD });
    buffer.append(events);
    await buffer.close();
    const segmentsDir = path.join(tmp.dir, 'segments');
    const names = (await readdir(segmentsDir)).sort();
    expect(names).toEqual(['segment-0000000000000001.amb', 'segment-0000000000000001.idx']);
    const file = path.join(segmentsDir, names[0]);
    const scan = await scanSegment(file);
    expect(scan.blocks.length).toBeGreaterThanOrEqual(4);
    expect(scan.blocks.reduce((n, b) => n + b.count, 0)).toBe(600);
    expect(scan.damaged).toEqual([]);
    expect(scan.tailBytes).toBe(0);
    return { dir: tmp.dir, file, events, blocks: scan.blocks };
  }

  async function flipByte(file: string, offset: number) {
    const fh = await openFile(file, 'r+');
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, offset);
    byte[0] ^= 0xff;
    await fh.write(byte, 0, 1, offset);
    await fh.close();
  }

  it('skip and report a block whose checksum fails, keeping the blocks before and after it', async () => {
    const { dir, file, events, blocks } = await bufferWithBlocks();
    const bad = blocks[1];
    await flipByte(file, bad.offset + bad.frameLen - 5);
    const expected = events.filter((e) => e.ts < bad.minTs || e.ts > bad.maxTs);
    expect(expected.length).toBe(600 - bad.count);

    // Read-only: the sidecar still lists the block; reading it finds the damage.
    const logs: string[] = [];
    const ro = await EventBuffer.openReadOnly(dir, { log: (level, msg) => logs.push(`${level} ${msg}`) });
    expect(await collect(ro.query())).toEqual(expected);
    expect(ro.stats().corruptBlocks).toBe(1);
    expect(logs).toEqual(['warn event buffer: skipping a damaged block']);
    await ro.close();

    // Writable: the last segment is rescanned, the damage reported, the rest kept.
    const logsRw: string[] = [];
    const rw = await EventBuffer.open({ dataDir: dir, ...KEEP_OLD, log: (level, msg) => logsRw.push(`${level} ${msg}`) });
    expect(logsRw).toEqual(['warn event buffer: skipping a damaged block']);
    expect(rw.stats().events).toBe(600 - bad.count);
    expect(await collect(rw.query())).toEqual(expected);
    await rw.close();
  });

  it('survive a damaged length field: the scan resynchronises on the next frame', async () => {
    const { dir, file, events, blocks } = await bufferWithBlocks();
    const bad = blocks[2];
    await flipByte(file, bad.offset + 6); // headerLen's high bytes: the frame cannot be parsed
    const scan = await scanSegment(file);
    expect(scan.blocks.map((b) => b.offset)).toEqual(blocks.filter((b) => b !== bad).map((b) => b.offset));
    expect(scan.damaged).toEqual([{ offset: bad.offset, length: bad.frameLen }]);
    const ro = await EventBuffer.openReadOnly(dir);
    expect(await collect(ro.query())).toEqual(events.filter((e) => e.ts < bad.minTs || e.ts > bad.maxTs));
    await ro.close();
  });

  it('drop a torn last block: read-only ignores it, a writer truncates it and appends after', async () => {
    const { dir, file, events, blocks } = await bufferWithBlocks();
    const last = blocks.at(-1)!;
    await truncate(file, last.offset + Math.floor(last.frameLen / 2));
    const kept = events.filter((e) => e.ts < last.minTs);
    const tornSize = (await stat(file)).size;

    const ro = await EventBuffer.openReadOnly(dir);
    expect(await collect(ro.query())).toEqual(kept);
    await ro.close();
    expect((await stat(file)).size).toBe(tornSize);

    const logs: string[] = [];
    const rw = await EventBuffer.open({ dataDir: dir, ...KEEP_OLD, log: (level, msg, fields) => logs.push(`${level} ${msg} ${JSON.stringify(fields)}`) });
    expect(logs).toEqual([
      `info event buffer: dropping the torn tail of the last segment ${JSON.stringify({ file, bytes: tornSize - last.offset })}`,
    ]);
    expect((await stat(file)).size).toBe(last.offset);
    const more = sequenceEvents(600, 10);
    rw.append(more);
    await rw.close();
    const again = await EventBuffer.openReadOnly(dir);
    expect(await collect(again.query())).toEqual([...kept, ...more]);
    expect(again.stats().corruptBlocks).toBe(0);
    await again.close();
  });

  it('ignore garbage after the last block and a sidecar that does not match the segment', async () => {
    const { dir, file, events } = await bufferWithBlocks();
    const idx = file.replace(/\.amb$/, '.idx');
    const sidecar = await readFile(idx);
    await writeFile(idx, Buffer.concat([sidecar.subarray(0, 24), sidecar.subarray(sidecar.length - 4)])); // damaged
    const ro = await EventBuffer.openReadOnly(dir);
    expect(await collect(ro.query())).toEqual(events);
    await ro.close();

    await writeFile(idx, sidecar);
    await appendFile(file, Buffer.from('ABLK\x10\x00\x00\x00garbage that looks like a frame start'));
    const ro2 = await EventBuffer.openReadOnly(dir); // sidecar is for a shorter file now
    expect(await collect(ro2.query())).toEqual(events);
    expect(ro2.stats().events).toBe(600);
    await ro2.close();
  });

  it('never trust a sidecar when recovering: a writer rescans the last segment', async () => {
    const { dir, file, events, blocks } = await bufferWithBlocks();
    const scan = await scanSegment(file);
    const size = (await stat(file)).size;
    // A well-formed sidecar that hides all but the first two blocks.
    await writeIndex(file.replace(/\.amb$/, '.idx'), blocks.slice(0, 2), size, scan.heads.slice(0, 2));
    const rw = await EventBuffer.open({ dataDir: dir, ...KEEP_OLD });
    expect(rw.stats().events).toBe(600);
    expect(await collect(rw.query())).toEqual(events);
    await rw.close();
  });

  it('discard a segment whose header was never written, and never touch one of another format', async () => {
    const { dir, events } = await bufferWithBlocks();
    const torn = path.join(dir, 'segments', 'segment-0000000000000002.amb');
    await writeFile(torn, Buffer.alloc(9));
    const ro = await EventBuffer.openReadOnly(dir);
    expect(await collect(ro.query())).toEqual(events);
    await ro.close();
    expect((await stat(torn)).size).toBe(9);
    const rw = await EventBuffer.open({ dataDir: dir, ...KEEP_OLD });
    await rw.close();
    await expect(stat(torn)).rejects.toThrow('ENOENT');

    const newer = path.join(dir, 'segments', 'segment-0000000000000009.amb');
    const header = Buffer.alloc(64);
    header.write('AMBERSEG', 0, 'latin1');
    header.writeUInt32LE(2, 8);
    await writeFile(newer, header);
    await expect(EventBuffer.open({ dataDir: dir, ...KEEP_OLD })).rejects.toThrow(
      `${newer} is not a segment this version of Amber can read: refusing to write to ${dir}`,
    );
    expect(await readFile(newer)).toEqual(header);
    const logs: string[] = [];
    const ro2 = await EventBuffer.openReadOnly(dir, { log: (level, msg) => logs.push(`${level}: ${msg}`) });
    expect(await collect(ro2.query())).toEqual(events);
    expect(logs).toEqual(['warn: event buffer: skipping a file that is not a segment this version can read']);
    await ro2.close();
  });
});
