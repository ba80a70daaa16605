/**
 * Reading the files of findings safely: the agent is privileged and the
 * container's files are the attacker's. Paths under a layer directory are
 * walked one component at a time with lstat, never through a symlink; files
 * are opened O_NOFOLLOW|O_NONBLOCK (a FIFO cannot block the open, and is then
 * refused as not a regular file) and checked to be the inode the walk found.
 * Hashing reads an fd opened when the exec was seen, in a bounded queue.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, type BigIntStats, existsSync, fstatSync, lstatSync, openSync, read } from 'node:fs';
import type { FileFacts } from '../sensor/events';
import { DEFAULTS } from '../defaults';

const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
const CHUNK = 1 << 20;

export function facts(st: BigIntStats): FileFacts {
  return { size: Number(st.size), mode: Number(st.mode), mtime: Number(st.mtimeNs), ctime: Number(st.ctimeNs) };
}

/**
 * lstat of root + rel without following any symlink on the way: null when a
 * component is missing, a symlink or not a directory, or rel has "..".
 */
export function lstatUnder(root: string, rel: string): BigIntStats | null {
  const parts = rel.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.length === 0 || parts.includes('..')) return null;
  let at = root;
  try {
    for (let i = 0; i < parts.length; i++) {
      at += `/${parts[i]}`;
      const st = lstatSync(at, { bigint: true });
      if (i < parts.length - 1 && !st.isDirectory()) return null;
      if (i === parts.length - 1) return st;
    }
  } catch {
    return null;
  }
  return null;
}

/** The image's own copy: the topmost lower layer holding rel as a regular file. */
export function imageCopy(lowerdirs: readonly string[], rel: string): FileFacts | null {
  for (const dir of lowerdirs) {
    const st = lstatUnder(dir, rel);
    if (st !== null) return st.isFile() ? facts(st) : null;
  }
  return null;
}

export interface Pinned {
  fd: number;
  stat: BigIntStats;
}

/**
 * Opens a regular file under root without following symlinks, and checks it is
 * the inode the walk found (a swap between the walk and the open is refused).
 */
export function openUnder(root: string, rel: string): Pinned | string {
  const walked = lstatUnder(root, rel);
  if (walked === null || !walked.isFile()) return 'not a regular file on the layer';
  let fd: number;
  try {
    fd = openSync(`${root}/${rel.replace(/^\/+/, '')}`, OPEN_FLAGS);
  } catch (err) {
    return `cannot open: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
  const stat = fstatSync(fd, { bigint: true });
  if (!stat.isFile() || stat.ino !== walked.ino || stat.dev !== walked.dev) {
    closeSync(fd);
    return 'the file changed while it was being opened';
  }
  return { fd, stat };
}

/** /proc/<pid>/exe opened (the kernel's file, whatever its path): the process may exit, the fd stays. */
export function openExe(procRoot: string, pid: number): Pinned | string {
  // existsSync does not build an Error: a gone process (the common case for short-lived drift) costs little
  if (!existsSync(`${procRoot}/${pid}`)) return EXITED;
  let fd: number;
  try {
    fd = openSync(`${procRoot}/${pid}/exe`, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ESRCH' ? EXITED : `cannot open /proc/${pid}/exe: ${code ?? (err as Error).message}`;
  }
  const stat = fstatSync(fd, { bigint: true });
  if (!stat.isFile()) {
    closeSync(fd);
    return 'not a regular file';
  }
  return { fd, stat };
}

export const EXITED = 'exited before hashing';

export interface HashResult {
  sha256: string;
  hashedBytes: number;
  hashError: string;
}

export interface HashQueueOptions {
  /** Files larger than this are not hashed ("larger than the hash cap"). */
  maxBytes: number;
  /** Pinned files waiting at most; more are not hashed ("hash queue full"), counted. */
  maxPending: number;
}

export const DEFAULT_HASH: HashQueueOptions = { maxBytes: DEFAULTS.detect.hashMaxBytes, maxPending: DEFAULTS.detect.hashMaxPending };

/** Hashes pinned files one at a time, off the event path; owns (closes) every fd handed to it. */
export class HashQueue {
  private readonly waiting: Array<{ pinned: Pinned; done: (r: HashResult) => void }> = [];
  private running = false;
  private closed = false;
  refused = 0;

  constructor(private readonly options: HashQueueOptions = DEFAULT_HASH) {}

  get pending(): number {
    return this.waiting.length + (this.running ? 1 : 0);
  }

  hash(pinned: Pinned): Promise<HashResult> {
    const size = Number(pinned.stat.size);
    if (size > this.options.maxBytes) {
      closeSync(pinned.fd);
      return Promise.resolve({ sha256: '', hashedBytes: 0, hashError: `larger than the hash cap (${this.options.maxBytes} bytes)` });
    }
    if (this.closed || this.pending >= this.options.maxPending) {
      closeSync(pinned.fd);
      this.refused++;
      return Promise.resolve({ sha256: '', hashedBytes: 0, hashError: 'hash queue full' });
    }
    return new Promise((done) => {
      this.waiting.push({ pinned, done });
      if (!this.running) void this.run();
    });
  }

  close(): void {
    this.closed = true;
  }

  private async run(): Promise<void> {
    this.running = true;
    for (let job = this.waiting.shift(); job; job = this.waiting.shift()) {
      let result: HashResult;
      try {
        result = await hashFd(job.pinned.fd, this.options.maxBytes);
      } catch (err) {
        result = { sha256: '', hashedBytes: 0, hashError: `read failed: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
      } finally {
        closeSync(job.pinned.fd);
      }
      job.done(result);
    }
    this.running = false;
  }
}

function readAt(fd: number, buf: Buffer, pos: number): Promise<number> {
  return new Promise((resolve, reject) => read(fd, buf, 0, buf.length, pos, (err, n) => (err ? reject(err) : resolve(n))));
}

async function hashFd(fd: number, maxBytes: number): Promise<HashResult> {
  const h = createHash('sha256');
  const buf = Buffer.allocUnsafe(CHUNK);
  let pos = 0;
  for (;;) {
    const n = await readAt(fd, buf, pos);
    if (n === 0) break;
    h.update(buf.subarray(0, n));
    pos += n;
    if (pos > maxBytes) return { sha256: '', hashedBytes: 0, hashError: `larger than the hash cap (${maxBytes} bytes)` };
  }
  return { sha256: h.digest('hex'), hashedBytes: pos, hashError: '' };
}
