/**
 * executable/<pid>.exe: the binary a process runs, copied through
 * /proc/<pid>/exe, which opens the kernel's own file: a binary deleted after
 * it started, or run from a memfd (fileless), is still there to copy, and no
 * path in the container is followed. The copy is a new file (exclusive,
 * owner-only); the hash is of the bytes copied.
 */
import { createHash } from 'node:crypto';
import { closeSync, read, readlinkSync, promises as fsp } from 'node:fs';
import { createExclusive, describeFsError } from '../buffer/datadir';
import { EXITED, openExe } from '../detect/files';
import { escapeName } from './tar';

export interface CopyExecutableOptions {
  /** Bytes copied at most; a larger binary is cut there (truncated). */
  maxBytes: number;
  procRoot?: string;
}

export const DEFAULT_EXECUTABLE = { maxBytes: 256 << 20, procRoot: '/proc' } as const;

export interface ExecutableCopy {
  /** Bytes copied (the copy's size). */
  size: number;
  /** The binary's size when opened. */
  fileSize: number;
  /** Of the copied bytes, lowercase hex. */
  sha256: string;
  /** The binary is larger than maxBytes: only its start was copied. */
  truncated: boolean;
  /** Its file was unlinked after the process started (not a memfd). */
  deleted: boolean;
  /** Run from a memfd: no file on any filesystem. */
  memfd: boolean;
  /** What /proc/<pid>/exe names (escapeName form: it is the container's path, any bytes), e.g. "/memfd:x (deleted)"; '' when gone. */
  exePath: string;
}

const CHUNK = 1 << 20;
const DELETED = ' (deleted)';

export async function copyExecutable(pid: number, outPath: string, options: CopyExecutableOptions): Promise<ExecutableCopy | { error: string }> {
  const procRoot = options.procRoot ?? DEFAULT_EXECUTABLE.procRoot;
  const pinned = openExe(procRoot, pid);
  if (typeof pinned === 'string') return { error: pinned === EXITED ? 'the process has exited' : pinned };
  let exePath = '';
  try {
    exePath = escapeName(readlinkSync(`${procRoot}/${pid}/exe`, { encoding: 'buffer' }));
  } catch {
    // exited since the open: the fd still holds the file
  }
  const memfd = exePath.startsWith('/memfd:');
  const deleted = !memfd && (exePath.endsWith(DELETED) || pinned.stat.nlink === 0n);
  const fileSize = Number(pinned.stat.size);
  let out: fsp.FileHandle;
  try {
    out = await createExclusive(outPath);
  } catch (err) {
    closeSync(pinned.fd);
    return { error: `cannot create ${outPath}: ${describeFsError(err)}` };
  }
  let ok = false;
  try {
    const hash = createHash('sha256');
    let size = 0;
    let truncated = false;
    for (;;) {
      const want = Math.min(CHUNK, options.maxBytes - size + 1);
      if (want <= 0) break;
      const buf = Buffer.allocUnsafe(want);
      const n = await readAt(pinned.fd, buf, size);
      if (n === 0) break;
      const keep = Math.min(n, options.maxBytes - size);
      if (keep < n) truncated = true;
      const part = buf.subarray(0, keep);
      hash.update(part);
      for (let off = 0; off < part.length; ) off += (await out.write(part, off, part.length - off, null)).bytesWritten;
      size += keep;
      if (truncated) break;
    }
    await out.sync();
    ok = true;
    return { size, fileSize, sha256: hash.digest('hex'), truncated, deleted, memfd, exePath };
  } catch (err) {
    return { error: `copying /proc/${pid}/exe: ${describeFsError(err)}` };
  } finally {
    closeSync(pinned.fd);
    await out.close().catch(() => {});
    if (!ok) await fsp.unlink(outPath).catch(() => {});
  }
}

function readAt(fd: number, buf: Buffer, pos: number): Promise<number> {
  return new Promise((resolve, reject) => read(fd, buf, 0, buf.length, pos, (err, n) => (err ? reject(err) : resolve(n))));
}
