/**
 * What the upload queue asks of a place that keeps evidence bundle archives
 * off the node (an S3 bucket, an SFTP server), and the pieces every such sink
 * shares: opening the archive safely, hashing what is sent, reading secrets.
 */
import { createHash, type Hash } from 'node:crypto';
import { constants as C, promises as fsp } from 'node:fs';
import { Transform, type TransformCallback } from 'node:stream';
import { openRegular } from '../../buffer/datadir';

/** One archive to ship: <dataDir>/incidents/<id>.tar.gz and what it must be. */
export interface ArchiveToUpload {
  id: string;
  path: string;
  size: number;
  /** Lowercase hex. */
  sha256: string;
}

export interface UploadResult {
  /** Where it now is, e.g. s3://bucket/prefix/<id>.tar.gz or sftp://user@host:22/dir/<id>.tar.gz. */
  remote: string;
}

export interface Sink {
  /** Unique among the configured sinks: the key of its status in the upload state. */
  readonly name: string;
  /**
   * Uploads and verifies one archive; resolves only once the remote copy is
   * checked to be the archive. Throws PermanentUploadError when retrying cannot help.
   */
  upload(archive: ArchiveToUpload, signal: AbortSignal): Promise<UploadResult>;
  /** Drops connections; idempotent. */
  close(): Promise<void>;
}

/** An upload that retrying will not fix (the local archive is gone or not what was captured). */
export class PermanentUploadError extends Error {
  override name = 'PermanentUploadError';
}

/** The archive opened without following links, checked to be a regular file of the expected size. */
export async function openArchive(archive: ArchiveToUpload): Promise<fsp.FileHandle> {
  let fh: fsp.FileHandle;
  try {
    fh = await openRegular(archive.path);
  } catch (err) {
    throw new PermanentUploadError(`archive ${archive.path}: ${(err as Error).message}`);
  }
  const { size } = await fh.stat();
  if (size !== archive.size) {
    await fh.close();
    throw new PermanentUploadError(`archive ${archive.path} is ${size} bytes, not the ${archive.size} it was captured with`);
  }
  return fh;
}

/** Passes bytes through and hashes them: what was sent is checked against the captured digest. */
export class HashingStream extends Transform {
  private readonly hash: Hash = createHash('sha256');
  bytes = 0;

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    done(null, chunk);
  }

  /** Lowercase hex, once the stream has ended. */
  digest(): string {
    return this.hash.digest('hex');
  }
}

/** Throws PermanentUploadError when the bytes sent are not the captured archive (it changed on disk). */
export function checkSent(archive: ArchiveToUpload, sent: HashingStream): void {
  const digest = sent.digest();
  if (sent.bytes !== archive.size || digest !== archive.sha256) {
    throw new PermanentUploadError(
      `archive ${archive.path} changed while it was uploaded: sent ${sent.bytes} bytes with sha256 ${digest}, ` +
        `captured ${archive.size} bytes with sha256 ${archive.sha256}`,
    );
  }
}

const MAX_SECRET_BYTES = 64 * 1024;

/**
 * A secret the operator put in a file (a Kubernetes secret mount is a chain of
 * links: followed, since the operator chose the path), without a trailing
 * newline. Never blocks on a FIFO; the message never holds the content.
 */
export async function readSecretFile(file: string, what: string): Promise<string> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, C.O_RDONLY | C.O_NONBLOCK);
  } catch (err) {
    throw new Error(`${what} file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new Error(`${what} file ${file} is not a regular file`);
    if (st.size > MAX_SECRET_BYTES) throw new Error(`${what} file ${file} is ${st.size} bytes, more than ${MAX_SECRET_BYTES}`);
    const text = (await fh.readFile()).toString('utf8').replace(/\r?\n$/, '');
    if (text === '') throw new Error(`${what} file ${file} is empty`);
    return text;
  } finally {
    await fh.close();
  }
}

/** A secret given inline, in a file, or in an environment variable named by the config. */
export interface SecretSource {
  value?: string;
  file?: string;
  env?: string;
}

export async function resolveSecret(source: SecretSource, what: string, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const given = [source.value, source.file, source.env].filter((v) => v !== undefined).length;
  if (given > 1) throw new Error(`${what}: give one of the value, a file or an environment variable name, not several`);
  if (source.value !== undefined) return source.value;
  if (source.file !== undefined) return readSecretFile(source.file, what);
  if (source.env !== undefined) {
    const v = env[source.env];
    if (v === undefined || v === '') throw new Error(`${what}: environment variable ${source.env} is not set`);
    return v;
  }
  return undefined;
}

/** An abort turned into the error an interrupted upload throws. */
export function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error('upload aborted: the queue is closing');
}
