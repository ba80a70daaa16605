/**
 * Bounded reads of runtime state files and /proc files for container
 * metadata. The agent is privileged and these paths sit in directories other
 * programs write: a name may be a FIFO (podman's ctl/winsz are), a device, a
 * symlink planted there, or huge. Opens never follow a final symlink and never
 * block (O_NONBLOCK); only regular files are read, up to a cap.
 */
import * as fs from 'fs';

// libuv adds O_CLOEXEC itself
const { O_RDONLY, O_NONBLOCK, O_NOFOLLOW } = fs.constants;
const OPEN_FLAGS = O_RDONLY | O_NONBLOCK | O_NOFOLLOW;

export class BoundedReadError extends Error {
  constructor(
    readonly path: string,
    readonly code: 'ENOTREG' | 'EFBIG',
    message: string,
  ) {
    super(message);
  }
}

/** The file's text, at most maxBytes; rejects non-regular files and larger files. */
export async function readBoundedFile(file: string, maxBytes: number): Promise<string> {
  const { bytes, truncated } = await readBoundedBytes(file, maxBytes);
  if (truncated) throw new BoundedReadError(file, 'EFBIG', `${file} is larger than ${maxBytes} bytes`);
  return bytes.toString('utf8');
}

/**
 * The file's first maxBytes bytes, and whether there was more; rejects
 * non-regular files. For files whose head is worth keeping when they are large
 * (a process's environ, a busy host's /proc/net/tcp).
 */
export async function readBoundedBytes(file: string, maxBytes: number): Promise<{ bytes: Buffer; truncated: boolean }> {
  const handle = await fs.promises.open(file, OPEN_FLAGS);
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new BoundedReadError(file, 'ENOTREG', `${file} is not a regular file`);
    // /proc files say size 0: read until EOF, up to the cap (one byte more tells whether there was more)
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buf = Buffer.allocUnsafe(Math.min(64 * 1024, maxBytes + 1 - total));
      const { bytesRead } = await handle.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      chunks.push(buf.subarray(0, bytesRead));
      total += bytesRead;
      if (total > maxBytes) return { bytes: Buffer.concat(chunks, total).subarray(0, maxBytes), truncated: true };
    }
    return { bytes: Buffer.concat(chunks, total), truncated: false };
  } finally {
    await handle.close();
  }
}

/** Like readBoundedFile, parsed as JSON; undefined when the file is absent; an error naming the file when it is not JSON. */
export async function readJsonIfExists(file: string, maxBytes: number): Promise<unknown> {
  let text: string;
  try {
    text = await readBoundedFile(file, maxBytes);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new Error(`${file}: not JSON: ${(err as Error).message}`);
  }
}

/** Rejects after ms unless the promise settles first; the timer never keeps the process alive. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
