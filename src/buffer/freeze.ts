/**
 * Frozen windows: immutable exports of a time window for investigators, in
 * formats any tool reads (plain msgpack, JSON lines), with their hashes.
 */
import { createHash, type Hash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Packr } from 'msgpackr';
import type { AmberEvent } from '../sensor/events';
import type { QueryFilter } from './query';
import { readdirIfExists } from './segment';

export const FROZEN_DIR = 'frozen';
export const WINDOW_FILE = 'window.json';
export const EVENTS_MSGPACK = 'events.msgpack';
export const EVENTS_JSONL = 'events.jsonl';
const TMP_PREFIX = '.tmp-';
const FLUSH_CHUNK_BYTES = 1024 * 1024;

export interface FreezeRequest {
  /** Centre of the window, ns since the epoch; default now. */
  at?: number;
  /** ns before `at`. */
  before: number;
  /** ns after `at`: the buffer keeps collecting until then. */
  after: number;
  reason: string;
  filter?: QueryFilter;
}

/** What window.json holds. */
export interface FrozenWindow {
  id: string;
  reason: string;
  /** Window bounds, inclusive, ns since the epoch. */
  from: number;
  to: number;
  count: number;
  /** Bytes of both event files. */
  bytes: number;
  /** RFC 3339. */
  created: string;
  filter?: QueryFilter;
  /** False when the buffer was closed before the window's end: events up to then are in. */
  complete: boolean;
  sha256: { 'events.msgpack': string; 'events.jsonl': string };
}

export class FreezeRefusedError extends Error {
  override name = 'FreezeRefusedError';
}

/** `20240501T120000Z-1a2b3c`: sortable by creation, unique. */
export function newWindowId(createdMs: number): string {
  const stamp = new Date(createdMs).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${stamp}-${randomBytes(3).toString('hex')}`;
}

/** Plain msgpack (maps, no msgpackr extensions) so any decoder reads the export. */
const plainPackr = new Packr({ useRecords: false });

class HashedFile {
  private readonly hash: Hash = createHash('sha256');
  private chunks: Buffer[] = [];
  private chunkBytes = 0;
  bytes = 0;

  constructor(private readonly fh: fsp.FileHandle) {}

  async add(data: Buffer): Promise<void> {
    this.hash.update(data);
    this.chunks.push(data);
    this.chunkBytes += data.length;
    this.bytes += data.length;
    if (this.chunkBytes >= FLUSH_CHUNK_BYTES) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.chunkBytes === 0) return;
    const data = Buffer.concat(this.chunks, this.chunkBytes);
    this.chunks = [];
    this.chunkBytes = 0;
    await this.fh.write(data);
  }

  async finish(): Promise<string> {
    await this.flush();
    await this.fh.sync();
    await this.fh.close();
    return this.hash.digest('hex');
  }

  async abandon(): Promise<void> {
    await this.fh.close();
  }
}

/**
 * Writes the window into `<frozenRoot>/<id>/`: first under a temporary name,
 * renamed when complete, so an investigator never sees half a window.
 * Throws FreezeRefusedError (and leaves nothing behind) past `maxBytes`.
 */
export async function writeFrozenWindow(
  frozenRoot: string,
  meta: Omit<FrozenWindow, 'count' | 'bytes' | 'sha256'>,
  batches: AsyncIterable<AmberEvent[]>,
  maxBytes: number,
): Promise<FrozenWindow> {
  const tmpDir = path.join(frozenRoot, TMP_PREFIX + meta.id);
  const finalDir = path.join(frozenRoot, meta.id);
  await fsp.mkdir(tmpDir, { recursive: true, mode: 0o700 });
  try {
    const msgpack = new HashedFile(await fsp.open(path.join(tmpDir, EVENTS_MSGPACK), 'wx'));
    const jsonl = new HashedFile(await fsp.open(path.join(tmpDir, EVENTS_JSONL), 'wx'));
    let count = 0;
    try {
      for await (const batch of batches) {
        await msgpack.add(Buffer.concat(batch.map((ev) => plainPackr.pack(ev))));
        await jsonl.add(Buffer.from(batch.map((ev) => `${JSON.stringify(ev)}\n`).join(''), 'utf8'));
        count += batch.length;
        if (msgpack.bytes + jsonl.bytes > maxBytes) {
          throw new FreezeRefusedError(
            `frozen window "${meta.reason}" exceeds the ${maxBytes} bytes left under the frozen-data cap ` +
              `(maxFrozenBytes) after ${count} events; nothing was kept`,
          );
        }
      }
    } catch (err) {
      await Promise.all([msgpack.abandon(), jsonl.abandon()]);
      throw err;
    }
    const window: FrozenWindow = {
      ...meta,
      count,
      bytes: msgpack.bytes + jsonl.bytes,
      sha256: { 'events.msgpack': await msgpack.finish(), 'events.jsonl': await jsonl.finish() },
    };
    await fsp.writeFile(path.join(tmpDir, WINDOW_FILE), `${JSON.stringify(window, null, 2)}\n`, { flag: 'wx' });
    for (const name of [EVENTS_MSGPACK, EVENTS_JSONL, WINDOW_FILE]) await fsp.chmod(path.join(tmpDir, name), 0o444);
    await fsp.rename(tmpDir, finalDir);
    return window;
  } catch (err) {
    await fsp.rm(tmpDir, { recursive: true, force: true });
    throw err;
  }
}

/** Frozen windows already on disk (sorted by id), ignoring anything that is not a complete window. */
export async function listFrozenWindows(frozenRoot: string): Promise<FrozenWindow[]> {
  const names = await readdirIfExists(frozenRoot);
  const windows: FrozenWindow[] = [];
  for (const name of names.sort()) {
    if (name.startsWith(TMP_PREFIX)) continue;
    try {
      const window = JSON.parse(await fsp.readFile(path.join(frozenRoot, name, WINDOW_FILE), 'utf8')) as FrozenWindow;
      if (window.id === name) windows.push(window);
    } catch {
      // Not a window (or an unreadable one): not ours to count.
    }
  }
  return windows;
}

/** Removes exports left half-written by a crash. */
export async function removeUnfinishedWindows(frozenRoot: string): Promise<void> {
  let names: string[];
  try {
    names = await fsp.readdir(frozenRoot);
  } catch {
    return;
  }
  for (const name of names) {
    if (name.startsWith(TMP_PREFIX)) await fsp.rm(path.join(frozenRoot, name), { recursive: true, force: true });
  }
}
