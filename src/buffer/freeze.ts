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
import type { BufferLog } from './damage';
import { createExclusive, readRegular } from './datadir';
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
    await this.fh.chmod(0o444); // through the descriptor: never a path a link could redirect
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
  // Not recursive: an existing name (a planted link) fails instead of being written through.
  await fsp.mkdir(tmpDir, { mode: 0o700 });
  try {
    const msgpack = new HashedFile(await createExclusive(path.join(tmpDir, EVENTS_MSGPACK), 0o600));
    const jsonl = new HashedFile(await createExclusive(path.join(tmpDir, EVENTS_JSONL), 0o600));
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
    const meta_ = await createExclusive(path.join(tmpDir, WINDOW_FILE), 0o444);
    try {
      await meta_.writeFile(`${JSON.stringify(window, null, 2)}\n`);
      await meta_.sync();
    } finally {
      await meta_.close();
    }
    await fsp.rename(tmpDir, finalDir);
    return window;
  } catch (err) {
    await fsp.rm(tmpDir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Frozen windows already on disk (sorted by id), ignoring anything that is not
 * a complete window; a window.json that does not hold every field is named in
 * a warning and left out (stats must not break on it).
 */
export async function listFrozenWindows(frozenRoot: string, log?: BufferLog): Promise<FrozenWindow[]> {
  const names = await readdirIfExists(frozenRoot);
  const windows: FrozenWindow[] = [];
  for (const name of names.sort()) {
    if (name.startsWith(TMP_PREFIX)) continue;
    const file = path.join(frozenRoot, name, WINDOW_FILE);
    let window: unknown;
    try {
      window = JSON.parse((await readRegular(file, MAX_WINDOW_FILE_BYTES)).toString('utf8'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' && (err as NodeJS.ErrnoException).code !== 'ENOTDIR') {
        log?.('warn', 'event buffer: skipping a frozen window it cannot read', { file, reason: (err as Error).message });
      }
      continue;
    }
    const missing = missingWindowFields(window);
    if (missing.length > 0) {
      log?.('warn', 'event buffer: skipping a frozen window whose window.json misses fields', { file, missing });
      continue;
    }
    if ((window as FrozenWindow).id === name) windows.push(window as FrozenWindow);
  }
  return windows;
}

const MAX_WINDOW_FILE_BYTES = 1024 * 1024;

/** The fields of window.json stats and exports rely on that are absent or of the wrong type. */
function missingWindowFields(w: unknown): string[] {
  if (typeof w !== 'object' || w === null) return ['(not an object)'];
  const o = w as Record<string, unknown>;
  const want: [string, string][] = [
    ['id', 'string'], ['reason', 'string'], ['from', 'number'], ['to', 'number'], ['count', 'number'],
    ['bytes', 'number'], ['created', 'string'], ['complete', 'boolean'], ['sha256', 'object'],
  ];
  return want.filter(([k, t]) => typeof o[k] !== t || o[k] === null || (t === 'number' && !Number.isFinite(o[k]))).map(([k]) => k);
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
