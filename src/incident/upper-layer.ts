/**
 * upper-layer.tar: what a container wrote, from its overlay upperdir, in the
 * OCI image-layer conventions (a deleted file is an empty `.wh.<name>`, an
 * opaque directory holds `.wh..wh..opq`).
 *
 * The attacker owns this directory and may change it while it is read. The
 * walk holds a directory fd per level and reaches children only through
 * /proc/self/fd/<dirfd>/<name> (never a path that could cross a swapped-in
 * symlink); every open is O_NOFOLLOW|O_NONBLOCK|O_NOCTTY and the fd's fstat
 * must be the inode lstat saw, else the entry is skipped as swapped. Symlinks
 * are stored as symlinks, FIFOs, sockets and devices are skipped (never
 * opened), sparse files stay sparse, hard links are stored once, and files
 * are read O_NOATIME (the capture leaves their access times as they were).
 * Entries are in the directories' own order (readdir), parents first.
 *
 * Caps: a file's data past maxFileBytes is cut (the entry ends there, listed
 * in `truncated`: the start of a large file is what identifies it); an entry
 * that would take the archive past maxTotalBytes is skipped and listed, and
 * the walk goes on listing (a smaller one later may still fit). Lists in the
 * result hold at most maxListed items each; the rest are counted.
 */
import { constants as C, closeSync, fstatSync, lstatSync, openSync, readlinkSync, promises as fsp, type BigIntStats } from 'node:fs';
import { createExclusive } from '../buffer/datadir';
import { loadBinding, type NativeFiles } from '../sensor/binding';
import { escapeName, planFile, TarWriter, type TarHeader } from './tar';

export interface UpperLayerOptions {
  /** Bytes of data kept per file (holes are free); the rest is cut. */
  maxFileBytes: number;
  /** The archive's size at most, headers included. */
  maxTotalBytes: number;
  /** Items kept in each of skipped, deletions and truncated; the rest counted in `omitted`. */
  maxListed?: number;
  /** Directory levels walked below the upperdir; deeper ones are skipped (each level holds an fd). */
  maxDepth?: number;
  /** Told each thing the capture skipped or cut, as it happens. */
  log?: (record: UpperLayerLogRecord) => void;
}

export const DEFAULT_UPPER_LAYER = {
  maxFileBytes: 64 << 20,
  maxTotalBytes: 1 << 30,
  maxListed: 10_000,
  maxDepth: 256,
} as const;

export interface UpperLayerLogRecord {
  msg: 'skipped' | 'truncated' | 'changed while read';
  /** The entry's name, escapeName form. */
  path: string;
  reason?: string;
  size?: number;
  captured?: number;
}

/** Paths are the names' raw bytes in escapeName form (src/incident/tar.ts; unescapeName reverses it), relative to the upperdir. */
export interface UpperLayerResult {
  /** Tar entries written (whiteouts included). */
  entries: number;
  /** The archive's bytes. */
  bytes: number;
  /** Regular files stored (hard links to them not counted). */
  files: number;
  skipped: Array<{ path: string; reason: string }>;
  /** Whiteouts (a file or directory of the image deleted) and opaque directories (the image's contents hidden). */
  deletions: Array<{ path: string; opaque: boolean }>;
  /** Files cut at maxFileBytes of data: their size and the size captured. */
  truncated: Array<{ path: string; size: number; captured: number }>;
  /** maxTotalBytes was reached: entries were skipped for it. */
  totalCapReached: boolean;
  /** Items past maxListed, not in the lists. */
  omitted: number;
}

const OPEN_CHILD = C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK | C.O_NOCTTY;
const OPEN_DIR = OPEN_CHILD | C.O_DIRECTORY;
/** Room kept for an entry's headers: a ustar header, a pax header and its records (the name twice at most). */
const HEADER_ROOM = 3 * 512;
const END_OF_ARCHIVE = 2 * 512;
const OPAQUE_XATTRS = ['trusted.overlay.opaque', 'user.overlay.opaque'];
const METACOPY_XATTRS = ['trusted.overlay.metacopy', 'user.overlay.metacopy'];
/** Inodes remembered for hard links; past this a further link is stored again (bigger, still right). */
const MAX_LINKED_INODES = 100_000;

let files: NativeFiles | undefined;
function nativeFiles(): NativeFiles {
  files ??= loadBinding().files;
  return files;
}

/** Writes the upperdir as a new tar at outPath (created exclusively, owner-only); a failure removes it. */
export async function captureUpperLayer(upperdir: string, outPath: string, options: UpperLayerOptions): Promise<UpperLayerResult> {
  const maxListed = options.maxListed ?? DEFAULT_UPPER_LAYER.maxListed;
  const maxDepth = options.maxDepth ?? DEFAULT_UPPER_LAYER.maxDepth;
  let rootFd: number;
  try {
    rootFd = openSync(upperdir, OPEN_DIR);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOTDIR' || code === 'ELOOP' ? 'not a directory, or a symbolic link (never followed)' : (code ?? (err as Error).message);
    throw new Error(`upper layer ${upperdir}: cannot open the directory: ${why}`);
  }
  const result: UpperLayerResult = { entries: 0, bytes: 0, files: 0, skipped: [], deletions: [], truncated: [], totalCapReached: false, omitted: 0 };
  const list = <T>(items: T[], item: T): void => {
    if (items.length < maxListed) items.push(item);
    else result.omitted++;
  };
  const skip = (rel: Buffer, reason: string): void => {
    const path = escapeName(rel);
    list(result.skipped, { path, reason });
    options.log?.({ msg: 'skipped', path, reason });
  };
  let fh: fsp.FileHandle | undefined;
  let ok = false;
  try {
    const rootStat = fstatSync(rootFd, { bigint: true });
    fh = await createExclusive(outPath);
    const tar = new TarWriter(fh);
    const linked = new Map<string, Buffer>();

    /** Whether `stored` more bytes (plus headers for a name) still fit; false marks the cap reached. */
    const fits = (rel: Buffer, stored: number): boolean => {
      const need = HEADER_ROOM + padTo512(2 * rel.length + 256) + padTo512(stored) + END_OF_ARCHIVE;
      if (tar.bytes + need <= options.maxTotalBytes) return true;
      result.totalCapReached = true;
      skip(rel, `the archive would pass its cap (${options.maxTotalBytes} bytes)`);
      return false;
    };
    const headerOf = (rel: Buffer, st: BigIntStats): TarHeader => ({
      name: rel,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtimeNs: st.mtimeNs,
    });
    const empty = (rel: Buffer, st: BigIntStats): TarHeader => ({ ...headerOf(rel, st), mode: 0o600 });

    const walk = async (dirFd: number, dirRel: Buffer, depth: number): Promise<void> => {
      const dirPath = `/proc/self/fd/${dirFd}`;
      const dir = await fsp.opendir(dirPath, { encoding: 'buffer' as BufferEncoding, bufferSize: 128 });
      try {
        for (let dirent = await dir.read(); dirent !== null; dirent = await dir.read()) {
          const name = dirent.name as unknown as Buffer;
          const rel = dirRel.length === 0 ? name : Buffer.concat([dirRel, SLASH, name]);
          const at = Buffer.concat([Buffer.from(`${dirPath}/`), name]);
          let st: BigIntStats | undefined;
          try {
            st = lstatSync(at, { bigint: true, throwIfNoEntry: false });
          } catch (err) {
            skip(rel, `cannot stat: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
            continue;
          }
          if (st === undefined) {
            skip(rel, 'removed while the layer was read');
            continue;
          }
          if (st.isCharacterDevice() && st.rdev === 0n) {
            // overlayfs' whiteout: the image's file or directory of this name was deleted
            const whiteout = Buffer.concat([dirRel.length === 0 ? EMPTY : Buffer.concat([dirRel, SLASH]), WH, name]);
            if (!fits(whiteout, 0)) continue;
            await tar.buffer(empty(whiteout, st), EMPTY);
            result.entries++;
            list(result.deletions, { path: escapeName(rel), opaque: false });
          } else if (st.isSymbolicLink()) {
            let target: Buffer;
            try {
              target = readlinkSync(at, { encoding: 'buffer' });
            } catch (err) {
              skip(rel, `cannot read the link: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
              continue;
            }
            if (!fits(Buffer.concat([rel, target]), 0)) continue;
            await tar.symlink({ ...headerOf(rel, st), mode: 0o777 }, target);
            result.entries++;
          } else if (st.isDirectory()) {
            if (st.dev !== rootStat.dev) {
              skip(rel, 'another filesystem mounted here');
              continue;
            }
            if (depth + 1 > maxDepth) {
              skip(rel, `deeper than ${maxDepth} directories`);
              continue;
            }
            const fd = openChecked(at, OPEN_DIR, st, rel, skip);
            if (fd === null) continue;
            try {
              if (!fits(rel, 0)) continue;
              const opened = fstatSync(fd, { bigint: true });
              await tar.directory(headerOf(rel, opened));
              result.entries++;
              if (hasXattr(fd, OPAQUE_XATTRS, 'y')) {
                const marker = Buffer.concat([rel, SLASH, WH_OPAQUE]);
                if (fits(marker, 0)) {
                  await tar.buffer(empty(marker, opened), EMPTY);
                  result.entries++;
                  list(result.deletions, { path: escapeName(rel), opaque: true });
                }
              }
              await walk(fd, rel, depth + 1);
            } finally {
              closeSync(fd);
            }
          } else if (st.isFile()) {
            const fd = openChecked(at, OPEN_CHILD, st, rel, skip);
            if (fd === null) continue;
            try {
              const opened = fstatSync(fd, { bigint: true });
              const key = `${opened.dev}:${opened.ino}`;
              const first = opened.nlink > 1n ? linked.get(key) : undefined;
              if (first !== undefined) {
                if (!fits(Buffer.concat([rel, first]), 0)) continue;
                await tar.hardlink(headerOf(rel, opened), first);
                result.entries++;
                continue;
              }
              if (hasXattr(fd, METACOPY_XATTRS, null)) {
                skip(rel, "metadata-only copy-up: the data is the image's");
                continue;
              }
              const size = Number(opened.size);
              const plan = planFile(fd, size, { maxDataBytes: options.maxFileBytes });
              if (!fits(rel, plan.storedBytes)) continue;
              const written = await tar.file(headerOf(rel, opened), fd, plan);
              result.entries++;
              result.files++;
              if (opened.nlink > 1n && linked.size < MAX_LINKED_INODES) linked.set(key, rel);
              if (plan.truncated) {
                const path = escapeName(rel);
                list(result.truncated, { path, size, captured: plan.size });
                options.log?.({ msg: 'truncated', path, size, captured: plan.size, reason: `more than ${options.maxFileBytes} bytes of data` });
              }
              if (written.changed) options.log?.({ msg: 'changed while read', path: escapeName(rel), reason: 'shorter than when planned: the rest stored as zeros' });
            } finally {
              closeSync(fd);
            }
          } else {
            skip(rel, st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : st.isBlockDevice() ? 'a block device' : 'a character device');
          }
        }
      } finally {
        await dir.close().catch(() => {});
      }
    };

    await walk(rootFd, EMPTY, 0);
    result.bytes = await tar.finish();
    await fh.sync();
    ok = true;
    return result;
  } finally {
    closeSync(rootFd);
    await fh?.close().catch(() => {});
    if (fh !== undefined && !ok) await fsp.unlink(outPath).catch(() => {});
  }
}

const EMPTY = Buffer.alloc(0);
const SLASH = Buffer.from('/');
const WH = Buffer.from('.wh.');
const WH_OPAQUE = Buffer.from('.wh..wh..opq');

function padTo512(n: number): number {
  return Math.ceil(n / 512) * 512;
}

/** Opens a child and checks it is the inode lstat saw (a swap in between is skipped, never followed). */
function openChecked(at: Buffer, flags: number, seen: BigIntStats, rel: Buffer, skip: (rel: Buffer, reason: string) => void): number | null {
  let fd: number;
  try {
    try {
      // O_NOATIME: reading the evidence does not change it (needs CAP_FOWNER, else the file's owner)
      fd = openSync(at, flags | C.O_NOATIME);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
      fd = openSync(at, flags);
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    skip(
      rel,
      code === 'ELOOP' || code === 'ENOTDIR'
        ? 'swapped for another kind of file while the layer was read'
        : code === 'ENOENT'
          ? 'removed while the layer was read'
          : `cannot open: ${code ?? (err as Error).message}`,
    );
    return null;
  }
  const opened = fstatSync(fd, { bigint: true });
  if (opened.dev !== seen.dev || opened.ino !== seen.ino || (opened.mode & 0o170000n) !== (seen.mode & 0o170000n)) {
    closeSync(fd);
    skip(rel, 'swapped for another file while the layer was read');
    return null;
  }
  return fd;
}

/** Any of the xattrs set (to `value`, when given). */
function hasXattr(fd: number, names: string[], value: string | null): boolean {
  for (const name of names) {
    let got: Buffer | null;
    try {
      got = nativeFiles().getxattr(fd, name);
    } catch {
      got = null;
    }
    if (got !== null && (value === null || got.toString('latin1') === value)) return true;
  }
  return false;
}
