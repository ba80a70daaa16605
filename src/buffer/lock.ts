/**
 * The data-dir lock: one writer per data dir. flock(2) on <dataDir>/LOCK, which
 * the kernel releases when the holder dies however it dies, so a restarted agent
 * (in a DaemonSet: PID 1 again, the same PID as the dead one) is never refused
 * by a stale lock. The holder's PID is written into the file for the message
 * that names who holds it; the file itself is never removed (removing it would
 * let two writers lock two different files of the same name).
 */
import { constants as C, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { loadBinding, type NativeFiles } from '../sensor/binding';
import { DataDirError, describeFsError } from './datadir';

export const LOCK_FILE = 'LOCK';

let files: NativeFiles | null = null;
/** The addon's file primitives (loaded once). */
export function nativeFiles(): NativeFiles {
  files ??= loadBinding().files;
  return files;
}

export class DataDirLock {
  private constructor(
    readonly file: string,
    private fh: fsp.FileHandle | null,
  ) {}

  /** Takes the lock or throws, naming the holder's PID. */
  static async acquire(dataDir: string): Promise<DataDirLock> {
    const file = path.join(dataDir, LOCK_FILE);
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(file, C.O_RDWR | C.O_CREAT | C.O_NOFOLLOW | C.O_NONBLOCK, 0o600);
    } catch (err) {
      throw new DataDirError(`data dir ${dataDir}: cannot open the lock file ${file}: ${describeFsError(err)}`);
    }
    try {
      if (!(await fh.stat()).isFile()) throw new DataDirError(`lock file ${file} is not a regular file`);
      if (!nativeFiles().lock(fh.fd)) {
        const pid = Number.parseInt((await fh.readFile('utf8').catch(() => '')).trim(), 10);
        const holder = pid > 0 ? `process ${pid}` : 'another process';
        throw new DataDirError(`data dir ${dataDir} is in use by ${holder} (lock file ${file})`);
      }
      await fh.truncate(0);
      // Best effort: an empty file (disk full) still locks; only the message loses the PID.
      await fh.write(`${process.pid}\n`, 0).catch(() => {});
    } catch (err) {
      await fh.close();
      throw err;
    }
    return new DataDirLock(file, fh);
  }

  /** Releases the lock (closing the file releases it; the kernel does the same on death). */
  async release(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    if (!fh) return;
    await fh.truncate(0).catch(() => {});
    await fh.close();
  }
}
