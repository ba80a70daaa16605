/**
 * Keeps the evidence bundles on the node within bounds: the oldest go first
 * (directory and archive together), but never one that an upload still owes
 * to a sink: evidence leaves the node before it leaves the disk.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import { readRegular } from '../buffer/datadir';
import { INCIDENTS_DIR, MANIFEST_FILE } from './manifest';
import { listBundles } from './bundle';

export const RETENTION_DEFAULTS = {
  maxBytes: 10 * 1024 ** 3,
  maxCount: 100,
} as const;

export interface RetentionBounds {
  /** Bytes of all bundles (directories and archives, apparent sizes) together. */
  maxBytes?: number;
  maxCount?: number;
  log: Logger;
  /** Bundles being captured now: never removed. */
  inProgress?: ReadonlySet<string>;
}

/** What retention asks of the upload queue (UploadQueue has it); null: no upload is configured. */
export interface UploadState {
  isUploaded(id: string): boolean;
  /** Drops the state of a removed bundle. */
  forget?(id: string): Promise<void>;
}

export interface Bundle {
  id: string;
  /** ms since the epoch: the manifest's createdAt, or the oldest mtime when it has none. */
  createdAt: number;
  bytes: number;
  hasDir: boolean;
  hasArchive: boolean;
}

export interface RetentionResult {
  removed: string[];
  /** Beyond the bounds but kept: not yet uploaded, or being captured. */
  kept: string[];
  bundles: number;
  bytes: number;
}

/** The finished bundles in <dataDir>/incidents (bundle.ts lists them), oldest first, with their bytes on disk. */
export async function retainedBundles(dataDir: string): Promise<Bundle[]> {
  const out: Bundle[] = [];
  for (const info of await listBundles(dataDir)) {
    if (!info.complete) continue; // a capture under way, or one cleanIncompleteBundles removes
    const b: Bundle = { id: info.id, createdAt: Infinity, bytes: 0, hasDir: false, hasArchive: false };
    const archive = info.archive ? await fsp.lstat(info.archive).catch(() => null) : null;
    if (archive?.isFile()) {
      b.hasArchive = true;
      b.bytes += archive.size;
      b.createdAt = archive.mtimeMs;
    }
    const dir = info.dir ? await fsp.lstat(info.dir).catch(() => null) : null;
    if (info.dir && dir?.isDirectory()) {
      b.hasDir = true;
      b.bytes += await treeBytes(info.dir);
      b.createdAt = (await manifestCreatedAt(path.join(info.dir, MANIFEST_FILE))) ?? Math.min(b.createdAt, dir.mtimeMs);
    }
    if (b.hasDir || b.hasArchive) out.push(b);
  }
  return out.sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
}

/**
 * Removes the oldest bundles while there are more than maxCount or they take
 * more than maxBytes, skipping those not yet uploaded (when uploadState is
 * given) and those being captured. Logs each removal and what it had to keep.
 */
export async function enforceRetention(dataDir: string, bounds: RetentionBounds, uploadState: UploadState | null): Promise<RetentionResult> {
  const { log } = bounds;
  const maxCount = bounds.maxCount ?? Infinity;
  const maxBytes = bounds.maxBytes ?? Infinity;
  const bundles = await retainedBundles(dataDir);
  let count = bundles.length;
  let bytes = bundles.reduce((n, b) => n + b.bytes, 0);
  const removed: string[] = [];
  const kept: string[] = [];
  const dir = path.join(dataDir, INCIDENTS_DIR);
  for (const b of bundles) {
    if (count <= maxCount && bytes <= maxBytes) break;
    const why = bounds.inProgress?.has(b.id) ? 'being captured' : uploadState && !uploadState.isUploaded(b.id) ? 'not yet uploaded' : null;
    if (why) {
      kept.push(b.id);
      log.warn({ event: 'retention', id: b.id, bytes: b.bytes, reason: why }, 'incident bundle beyond the retention bounds kept');
      continue;
    }
    if (b.hasArchive) await fsp.rm(path.join(dir, `${b.id}.tar.gz`), { force: true });
    // rm removes links found inside, never what they point to; the name itself was lstat'ed a directory
    if (b.hasDir) await fsp.rm(path.join(dir, b.id), { recursive: true, force: true });
    await uploadState?.forget?.(b.id);
    count--;
    bytes -= b.bytes;
    removed.push(b.id);
    log.info({ event: 'retention', id: b.id, bytes: b.bytes, createdAt: new Date(b.createdAt).toISOString() }, 'incident bundle removed (retention)');
  }
  if (kept.length > 0) {
    log.warn({ event: 'retention', kept, bundles: count, bytes, maxCount: bounds.maxCount, maxBytes: bounds.maxBytes }, 'incident bundles still beyond the retention bounds');
  }
  return { removed, kept, bundles: count, bytes };
}

async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await fsp.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    if (entry.isDirectory()) total += await treeBytes(p);
    else if (entry.isFile()) total += (await fsp.lstat(p)).size;
  }
  return total;
}

async function manifestCreatedAt(file: string): Promise<number | null> {
  try {
    const manifest = JSON.parse((await readRegular(file, 64 * 1024 * 1024)).toString('utf8')) as { createdAt?: unknown };
    const t = typeof manifest.createdAt === 'string' ? Date.parse(manifest.createdAt) : NaN;
    return Number.isFinite(t) ? t : null;
  } catch {
    return null;
  }
}
