/**
 * The data dir as a privileged process must treat it: checked before use
 * (owned by us, writable by nobody else), every file created exclusively and
 * opened without following links, nothing opened that is not a regular file
 * (a FIFO would block forever), and what cannot be read moved aside, never
 * deleted.
 */
import { constants as C, promises as fsp } from 'node:fs';
import * as path from 'node:path';

export const QUARANTINE_DIR = 'quarantine';

/** A data dir or file Amber refuses to use; the message names the path and the reason. */
export class DataDirError extends Error {
  override name = 'DataDirError';
}

/** Why an fs call failed, in words an operator acts on. */
export function describeFsError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOTDIR':
      return 'not a directory';
    case 'EROFS':
      return 'read-only filesystem';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'ENOENT':
      return 'does not exist';
    case 'ELOOP':
      return 'is a symbolic link';
    case 'ENOSPC':
      return 'no space left on the device';
    default:
      return (err as Error).message ?? String(err);
  }
}

/**
 * Creates (0700) or checks one directory of the data dir. `followLink`: only
 * the data dir itself may be reached through a link (an operator's choice of
 * path); its subfolders may not.
 */
export async function ensureDir(dir: string, followLink: boolean): Promise<void> {
  try {
    await fsp.mkdir(dir, { mode: 0o700 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && followLink) {
      // Parents missing: create them too (only the data dir's own path, chosen by the operator).
      try {
        await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
      } catch (err2) {
        throw new DataDirError(`data dir ${dir}: ${describeFsError(err2)}`);
      }
    } else if (code !== 'EEXIST') {
      throw new DataDirError(`data dir ${dir}: ${describeFsError(err)}`);
    }
  }
  await checkDir(dir, followLink);
}

/** Refuses a directory an other user could plant files in (or that is not ours). */
export async function checkDir(dir: string, followLink: boolean): Promise<void> {
  let st;
  try {
    st = followLink ? await fsp.stat(dir) : await fsp.lstat(dir);
  } catch (err) {
    throw new DataDirError(`data dir ${dir}: ${describeFsError(err)}`);
  }
  if (st.isSymbolicLink()) throw new DataDirError(`data dir folder ${dir} is a symbolic link: refusing to follow it`);
  if (!st.isDirectory()) throw new DataDirError(`data dir ${dir}: not a directory`);
  const uid = process.geteuid?.() ?? 0;
  if (st.uid !== uid) {
    throw new DataDirError(`data dir ${dir} is owned by uid ${st.uid}, not by uid ${uid} that Amber runs as: refusing to use it`);
  }
  if ((st.mode & 0o022) !== 0) {
    const who = [st.mode & 0o020 ? 'group' : '', st.mode & 0o002 ? 'others' : ''].filter(Boolean).join(' and ');
    throw new DataDirError(
      `data dir ${dir} is writable by ${who} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}): ` +
        `refusing to use it (chmod go-w, or 0700)`,
    );
  }
}

/** Creates a new file: fails if anything (a file, a planted link) already has the name. */
export function createExclusive(file: string, mode = 0o600): Promise<fsp.FileHandle> {
  return fsp.open(file, C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, mode);
}

/** Writes a whole new file under `tmp` (exclusively) and renames it to `file`. */
export async function writeFileAtomic(file: string, data: Buffer, mode = 0o600): Promise<void> {
  const tmp = `${file}.tmp`;
  let fh: fsp.FileHandle;
  try {
    fh = await createExclusive(tmp, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    // A leftover of ours (or something planted): unlink removes the name, never a link's target.
    await fsp.unlink(tmp);
    fh = await createExclusive(tmp, mode);
  }
  try {
    await fh.writeFile(data);
    await fh.close();
    await fsp.rename(tmp, file);
  } catch (err) {
    await fh.close().catch(() => {});
    await fsp.unlink(tmp).catch(() => {});
    throw err;
  }
}

export class NotRegularFileError extends Error {
  override name = 'NotRegularFileError';
  constructor(
    readonly file: string,
    readonly what: string,
  ) {
    super(`${file} is ${what}, not a regular file`);
  }
}

/**
 * Opens a file of the data dir for reading: never through a link, never
 * blocking (a FIFO), and only when it is a regular file.
 */
export async function openRegular(file: string, write = false): Promise<fsp.FileHandle> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, (write ? C.O_RDWR : C.O_RDONLY) | C.O_NOFOLLOW | C.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw new NotRegularFileError(file, 'a symbolic link');
    if (code === 'EISDIR') throw new NotRegularFileError(file, 'a directory');
    if (code === 'ENXIO') throw new NotRegularFileError(file, 'a FIFO or socket without a peer');
    throw err;
  }
  const st = await fh.stat();
  if (!st.isFile()) {
    await fh.close();
    throw new NotRegularFileError(file, kindOf(st));
  }
  return fh;
}

/** Reads a whole (small) file of the data dir, safely opened; at most `maxBytes`. */
export async function readRegular(file: string, maxBytes: number): Promise<Buffer> {
  const fh = await openRegular(file);
  try {
    const size = (await fh.stat()).size;
    if (size > maxBytes) throw new Error(`${file} is ${size} bytes, more than the ${maxBytes} such a file can be`);
    const buf = Buffer.alloc(size);
    const { bytesRead } = await fh.read(buf, 0, size, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

function kindOf(st: { isDirectory(): boolean; isFIFO(): boolean; isSocket(): boolean; isSymbolicLink(): boolean }): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isSymbolicLink()) return 'a symbolic link';
  return 'a device';
}

/**
 * Moves a file Amber cannot read out of the way (into <dataDir>/quarantine/),
 * never deleting it: it may be evidence, or someone's file. Returns the new path.
 */
export async function quarantine(dataDir: string, file: string): Promise<string> {
  const dir = path.join(dataDir, QUARANTINE_DIR);
  await ensureDir(dir, false);
  const base = path.basename(file);
  for (let n = 0; ; n++) {
    const to = path.join(dir, n === 0 ? base : `${base}.${n}`);
    // rename moves the name itself (a link stays a link, never followed); it would replace an
    // earlier quarantined file of the same name, so look first (only the writer, under the lock, moves files here).
    const exists = await fsp.lstat(to).then(
      () => true,
      () => false,
    );
    if (exists) continue;
    await fsp.rename(file, to);
    return to;
  }
}
