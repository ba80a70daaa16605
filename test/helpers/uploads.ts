/** Archives and loggers for the upload and retention tests. */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino, { type Logger } from 'pino';

export interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

/** A pino logger whose lines the test reads. */
export function recordingLogger(): { log: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { log, lines };
}

export function tempDataDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'amber-uploads-'));
  mkdirSync(path.join(dir, 'incidents'), { mode: 0o700 });
  return dir;
}

export interface TestArchive {
  id: string;
  path: string;
  bytes: Buffer;
  size: number;
  sha256: string;
}

/** <dataDir>/incidents/<id>.tar.gz of `size` random bytes. */
export function writeArchive(dataDir: string, id: string, size: number): TestArchive {
  const bytes = randomBytes(size);
  const file = path.join(dataDir, 'incidents', `${id}.tar.gz`);
  writeFileSync(file, bytes, { mode: 0o600 });
  return { id, path: file, bytes, size, sha256: createHash('sha256').update(bytes).digest('hex') };
}

/** Polls until `check` returns a value (not undefined); fails after `ms`. */
export async function waitFor<T>(what: string, check: () => T | undefined, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = check();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
