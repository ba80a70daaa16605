/**
 * Recovery: what a data dir's segments hold, built from the files alone.
 * Writable: the last segment is always scanned (never trusting its sidecar),
 * torn tails are truncated, sidecars rewritten, files that cannot be read are
 * moved aside (quarantine) and named in a log line. Read-only: nothing is
 * written, such files are skipped with a warning. Nothing is ever deleted but
 * a segment that provably holds no event and leftover temporary sidecars.
 */
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import type { BlockInfo } from './frame';
import { NotRegularFileError, openRegular, quarantine } from './datadir';
import type { BufferLog, DamageLog } from './damage';
import { indexFileName, listSegments, readdirIfExists, readIndex, scanSegment, SEGMENTS_DIR, segmentFileName, writeIndex } from './segment';

export interface Segment {
  seq: number;
  file: string;
  size: number;
  blocks: BlockInfo[];
  /** Frame heads of the blocks, kept for the active segment's sidecar index. */
  heads: Buffer[];
  fh: fsp.FileHandle | null;
  openedAt: number;
}

export interface Recovered {
  segments: Segment[];
  nextSeq: number;
}

const TMP_INDEX_RE = /^segment-\d{16}\.idx\.tmp$/;

export async function recoverSegments(
  dataDir: string,
  readOnly: boolean,
  log: BufferLog,
  damage: DamageLog,
): Promise<Recovered> {
  const dir = path.join(dataDir, SEGMENTS_DIR);
  const seqs = await listSegments(dir);
  if (!readOnly) {
    for (const name of await readdirIfExists(dir)) {
      if (TMP_INDEX_RE.test(name)) await fsp.unlink(path.join(dir, name)).catch(() => {});
    }
  }
  /** A file that cannot be read: moved aside when writable, skipped when read-only. */
  const setAside = async (file: string, reason: string): Promise<void> => {
    if (readOnly) {
      log('warn', 'event buffer: skipping a file it cannot read', { file, reason });
      return;
    }
    try {
      const to = await quarantine(dataDir, file);
      log('warn', 'event buffer: moved a file it cannot read aside (quarantine)', { file, to, reason });
    } catch (err) {
      log('error', 'event buffer: could not move aside a file it cannot read; skipping it', { file, reason, error: String(err) });
    }
  };

  const segments: Segment[] = [];
  for (const [i, seq] of seqs.entries()) {
    const file = path.join(dir, segmentFileName(seq));
    const isLast = i === seqs.length - 1;
    let size: number;
    try {
      const fh = await openRegular(file);
      try {
        size = (await fh.stat()).size;
      } finally {
        await fh.close();
      }
    } catch (err) {
      await setAside(file, err instanceof NotRegularFileError ? err.message : String(err));
      continue;
    }
    let blocks: BlockInfo[] | null = null;
    if (!isLast || readOnly) {
      try {
        blocks = await readIndex(indexFileName(file), size);
      } catch (err) {
        await setAside(indexFileName(file), (err as Error).message);
      }
    }
    let segmentSize = size;
    if (!blocks) {
      const scan = await scanSegment(file);
      if (scan.header === 'foreign') {
        if (!readOnly) throw new Error(`${file} is not a segment this version of Amber can read: refusing to write to ${dataDir}`);
        log('warn', 'event buffer: skipping a file that is not a segment this version can read', { file });
        continue;
      }
      if (scan.header === 'torn') {
        // Created but never written (crash or disk full right at rotation): it holds no event.
        if (!readOnly) {
          log('info', 'event buffer: removing a segment that was created but never written', { file, bytes: size });
          await fsp.unlink(file);
          await fsp.unlink(indexFileName(file)).catch(() => {});
        }
        continue;
      }
      if (scan.header === 'damaged' && scan.blocks.length === 0) {
        await setAside(file, 'its header is damaged and no block in it verifies');
        continue;
      }
      for (const damaged of scan.damaged) damage.report(file, damaged.offset, `${damaged.length} damaged bytes skipped`);
      if (scan.tailBytes > 0) {
        if (isLast) {
          const what = readOnly ? 'ignoring' : 'dropping';
          log('info', `event buffer: ${what} the torn tail of the last segment`, { file, bytes: scan.tailBytes });
        } else {
          damage.report(file, scan.validEnd, `${scan.tailBytes} damaged bytes at the end skipped`);
        }
      }
      blocks = scan.blocks;
      segmentSize = scan.validEnd;
      if (!readOnly) {
        if (scan.tailBytes > 0 && isLast) {
          const fh = await openRegular(file, true);
          try {
            await fh.truncate(scan.validEnd);
          } finally {
            await fh.close();
          }
        } else {
          segmentSize = size; // damaged bytes at the end of an older segment are kept, never cut
        }
        await writeIndex(indexFileName(file), blocks, segmentSize, scan.heads).catch(() => {});
      }
    }
    segments.push({ seq, file, size: segmentSize, blocks, heads: [], fh: null, openedAt: 0 });
  }
  return { segments, nextSeq: (seqs.at(-1) ?? 0) + 1 };
}
