/**
 * Ships archives to an SFTP server. The server's host key must be one of the
 * pinned fingerprints (an unknown key is refused unless acceptAnyHostKey is
 * set). Each archive is written to a hidden temporary name, checked (size,
 * and by default its sha256 read back from the server), then renamed into
 * place, so a reader of remoteDir never sees a partial archive. A sidecar
 * "<id>.tar.gz.sha256" (sha256sum format) lands first, so whoever takes the
 * archive can check it.
 */
import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { Client, type ConnectConfig, type SFTPWrapper, type Stats } from 'ssh2';
import { abortError, type ArchiveToUpload, openArchive, PermanentUploadError, readSecretFile, type Sink, type UploadResult } from './sink';

interface Connection {
  client: Client;
  /** Rejects when the connection ends: ssh2 would leave the calls under way pending. */
  lost: Promise<never>;
}

export const SFTP_DEFAULTS = {
  port: 22,
  /** 'sha256': read the uploaded file back and hash it; 'size': only compare its size. */
  verify: 'sha256' as 'sha256' | 'size',
  acceptAnyHostKey: false,
  /** Connecting and authenticating must end within this. */
  readyTimeoutMs: 20_000,
  /** A server that answers no keepalive for keepaliveCountMax intervals is taken as gone. */
  keepaliveIntervalMs: 10_000,
  keepaliveCountMax: 3,
} as const;

export interface SftpSinkOptions {
  /** Unique among the sinks; defaults to "sftp". */
  name?: string;
  host: string;
  port?: number;
  username: string;
  /** Key authentication (OpenSSH or PEM private key); its passphrase, if any, in passphraseFile. */
  privateKeyFile?: string;
  passphraseFile?: string;
  /** Password authentication, the password in a file. */
  passwordFile?: string;
  /** The server's host key fingerprints as `ssh-keygen -lf` prints them: "SHA256:<base64>". */
  hostKeyFingerprints?: string[];
  /** Accepts any host key (logged in the remote's status): only for a server reached over a trusted network. */
  acceptAnyHostKey?: boolean;
  /** Absolute directory on the server (inside its chroot, if any); must exist. */
  remoteDir: string;
  verify?: 'sha256' | 'size';
  readyTimeoutMs?: number;
  keepaliveIntervalMs?: number;
  keepaliveCountMax?: number;
}

/** The OpenSSH SHA256 fingerprint of a host key blob: "SHA256:" + unpadded base64. */
export function fingerprintOf(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

function normalizeFingerprint(text: string): string {
  const m = /^SHA256:([A-Za-z0-9+/]{43})=?$/.exec(text.trim());
  if (!m) throw new Error(`sftp sink: host key fingerprint ${JSON.stringify(text)} is not SHA256:<base64> as ssh-keygen -lf prints it`);
  return `SHA256:${m[1]}`;
}

export class SftpSink implements Sink {
  readonly name: string;
  private readonly opts: SftpSinkOptions;
  private readonly pinned: ReadonlySet<string>;
  private readonly remoteDir: string;
  private readonly clients = new Set<Client>();

  private constructor(opts: SftpSinkOptions, pinned: Set<string>) {
    this.name = opts.name ?? 'sftp';
    this.opts = opts;
    this.pinned = pinned;
    this.remoteDir = opts.remoteDir.replace(/\/+$/, '') || '/';
  }

  /** Checks the options and that the key or password file can be read; throws naming what is wrong, never a secret. */
  static async create(opts: SftpSinkOptions): Promise<SftpSink> {
    if (!opts.host) throw new Error('sftp sink: host is required');
    if (!opts.username) throw new Error('sftp sink: username is required');
    if (!opts.remoteDir?.startsWith('/')) throw new Error('sftp sink: remoteDir must be an absolute path');
    if (opts.remoteDir.split('/').includes('..')) throw new Error('sftp sink: remoteDir must not hold ".."');
    if (!opts.privateKeyFile && !opts.passwordFile) throw new Error('sftp sink: give privateKeyFile or passwordFile');
    const pinned = new Set((opts.hostKeyFingerprints ?? []).map(normalizeFingerprint));
    if (pinned.size === 0 && !opts.acceptAnyHostKey) {
      throw new Error('sftp sink: give hostKeyFingerprints (ssh-keygen -lf <host key>.pub), or set acceptAnyHostKey to accept an unknown key');
    }
    const verify = opts.verify ?? SFTP_DEFAULTS.verify;
    if (verify !== 'sha256' && verify !== 'size') throw new Error(`sftp sink: verify must be sha256 or size, not ${String(verify)}`);
    const sink = new SftpSink(opts, pinned);
    await sink.credentials(); // unreadable files: said now, at startup
    return sink;
  }

  private async credentials(): Promise<Pick<ConnectConfig, 'privateKey' | 'passphrase' | 'password'>> {
    const o = this.opts;
    return {
      privateKey: o.privateKeyFile ? await readSecretFile(o.privateKeyFile, 'sftp sink private key') : undefined,
      passphrase: o.passphraseFile ? await readSecretFile(o.passphraseFile, 'sftp sink key passphrase') : undefined,
      password: o.passwordFile ? await readSecretFile(o.passwordFile, 'sftp sink password') : undefined,
    };
  }

  private url(file: string): string {
    return `sftp://${this.opts.username}@${this.opts.host}:${this.opts.port ?? SFTP_DEFAULTS.port}${file}`;
  }

  async upload(archive: ArchiveToUpload, signal: AbortSignal): Promise<UploadResult> {
    const base = `${archive.id}.tar.gz`;
    const dir = this.remoteDir === '/' ? '' : this.remoteDir;
    const final = `${dir}/${base}`;
    const partial = `${dir}/.${base}.part`; // hidden while partial; an earlier attempt's leftover is truncated
    const sidecarPartial = `${dir}/.${base}.sha256.part`;
    const fh = await openArchive(archive);
    let conn: Connection | undefined;
    const onAbort = () => conn?.client.destroy();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      if (signal.aborted) throw abortError(signal);
      conn = await this.connect();
      if (signal.aborted) throw abortError(signal);
      const { client, lost } = conn;
      // ssh2 leaves calls pending when the connection drops: every step races the loss
      const step = <T>(work: Promise<T>): Promise<T> => {
        work.catch(() => {});
        return Promise.race([work, lost]);
      };
      const sftp = await step(new Promise<SFTPWrapper>((resolve, reject) => client.sftp((err, s) => (err ? reject(err) : resolve(s)))));
      const dirStat = await step(call<Stats>((cb) => sftp.stat(this.remoteDir, cb))).catch((err: Error) => {
        throw new Error(`sftp remote dir ${this.remoteDir}: ${err.message}`);
      });
      if (!dirStat.isDirectory()) throw new Error(`sftp remote dir ${this.remoteDir} is not a directory`);

      const sent = await step(putFile(sftp, fh, partial, archive.size));
      if (sent !== archive.sha256) {
        throw new PermanentUploadError(`archive ${archive.path} changed while it was uploaded: sent sha256 ${sent}, captured ${archive.sha256}`);
      }
      const st = await step(call<Stats>((cb) => sftp.stat(partial, cb)));
      if (st.size !== archive.size) throw new Error(`${this.url(partial)}: verification failed: size ${st.size}, expected ${archive.size}`);
      if ((this.opts.verify ?? SFTP_DEFAULTS.verify) === 'sha256') {
        const back = await step(hashRemote(sftp, partial, archive.size));
        if (back !== archive.sha256) throw new Error(`${this.url(partial)}: verification failed: sha256 read back ${back}, expected ${archive.sha256}`);
      }
      // the sidecar first: whoever sees the archive can check it
      await step(writeRemote(sftp, sidecarPartial, Buffer.from(`${archive.sha256}  ${base}\n`)));
      await step(rename(sftp, sidecarPartial, `${final}.sha256`));
      await step(rename(sftp, partial, final));
      return { remote: this.url(final) };
    } catch (err) {
      if (signal.aborted) throw abortError(signal);
      throw err;
    } finally {
      signal.removeEventListener('abort', onAbort);
      if (conn) {
        conn.client.end();
        this.clients.delete(conn.client);
      }
      await fh.close();
    }
  }

  private async connect(): Promise<Connection> {
    const o = this.opts;
    const port = o.port ?? SFTP_DEFAULTS.port;
    const client = new Client();
    this.clients.add(client);
    let seen: string | undefined;
    const creds = await this.credentials();
    return new Promise<Connection>((resolve, reject) => {
      const fail = (err: Error) => {
        this.clients.delete(client);
        client.destroy();
        if (seen !== undefined && !this.accepts(seen)) {
          reject(new Error(`sftp ${o.host}:${port}: host key ${seen} is not one of the pinned hostKeyFingerprints: refused`));
        } else reject(new Error(`sftp ${o.host}:${port}: ${err.message}`));
      };
      client.once('ready', () => {
        client.removeListener('error', fail);
        let why = 'connection closed';
        client.on('error', (err: Error) => (why = err.message));
        const lost = new Promise<never>((_, rejectLost) => client.once('close', () => rejectLost(new Error(`sftp ${o.host}:${port}: ${why}`))));
        lost.catch(() => {});
        resolve({ client, lost });
      });
      client.once('error', fail);
      client.connect({
        host: o.host,
        port,
        username: o.username,
        ...creds,
        hostVerifier: (key: Buffer) => {
          seen = fingerprintOf(key);
          return this.accepts(seen);
        },
        readyTimeout: o.readyTimeoutMs ?? SFTP_DEFAULTS.readyTimeoutMs,
        keepaliveInterval: o.keepaliveIntervalMs ?? SFTP_DEFAULTS.keepaliveIntervalMs,
        keepaliveCountMax: o.keepaliveCountMax ?? SFTP_DEFAULTS.keepaliveCountMax,
      });
    });
  }

  private accepts(fingerprint: string): boolean {
    return this.pinned.has(fingerprint) || (this.pinned.size === 0 && this.opts.acceptAnyHostKey === true);
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.destroy();
    this.clients.clear();
  }
}

function call<T>(fn: (cb: (err: Error | null | undefined, value: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));
}

/** posix-rename@openssh.com replaces the target atomically; plain SFTP rename refuses an existing one. */
function rename(sftp: SFTPWrapper, from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err: Error | null | undefined) => (err ? reject(new Error(`sftp rename ${from} to ${to}: ${err.message}`)) : resolve());
    try {
      sftp.ext_openssh_rename(from, to, done);
    } catch {
      sftp.rename(from, to, done); // a server without the extension
    }
  });
}

/** SFTP requests of this many bytes, this many in flight: one at a time is latency-bound. */
const CHUNK_BYTES = 32 * 1024;
const IN_FLIGHT = 32;

/** Writes the local file to `remote` (created 0600, truncated); returns the sha256 of what it read and sent. */
async function putFile(sftp: SFTPWrapper, fh: FileHandle, remote: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  const handle = await call<Buffer>((cb) => sftp.open(remote, 'w', { mode: 0o600 }, cb));
  try {
    for (let offset = 0; offset < size; ) {
      const window: Promise<unknown>[] = [];
      for (let i = 0; i < IN_FLIGHT && offset < size; i++) {
        const len = Math.min(CHUNK_BYTES, size - offset);
        const buf = Buffer.allocUnsafe(len);
        const { bytesRead } = await fh.read(buf, 0, len, offset);
        if (bytesRead !== len) throw new PermanentUploadError(`archive shrank while it was uploaded (${offset + bytesRead} bytes, captured ${size})`);
        hash.update(buf);
        const at = offset;
        window.push(observed(call<void>((cb) => sftp.write(handle, buf, 0, len, at, cb))));
        offset += len;
      }
      await settleAll(window);
    }
  } finally {
    await call<void>((cb) => sftp.close(handle, cb)).catch(() => {});
  }
  return hash.digest('hex');
}

/** The sha256 of the remote file's first `size` bytes, read back. */
async function hashRemote(sftp: SFTPWrapper, remote: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  const handle = await call<Buffer>((cb) => sftp.open(remote, 'r', cb));
  const readAt = (buf: Buffer, at: number) =>
    new Promise<number>((resolve, reject) => sftp.read(handle, buf, 0, buf.length, at, (err, n) => (err ? reject(err) : resolve(n))));
  try {
    for (let offset = 0; offset < size; ) {
      const window: Array<{ buf: Buffer; at: number; read: Promise<number> }> = [];
      for (let i = 0; i < IN_FLIGHT && offset < size; i++) {
        const buf = Buffer.allocUnsafe(Math.min(CHUNK_BYTES, size - offset));
        window.push({ buf, at: offset, read: observed(readAt(buf, offset)) });
        offset += buf.length;
      }
      await settleAll(window.map((w) => w.read));
      for (const w of window) {
        // a server may answer a read with fewer bytes: the rest is asked for again
        for (let got = await w.read; got < w.buf.length; ) {
          const n = await readAt(w.buf.subarray(got), w.at + got);
          if (n <= 0) throw new Error(`${remote} ended at ${w.at + got} bytes, expected ${size}`);
          got += n;
        }
        hash.update(w.buf);
      }
    }
  } finally {
    await call<void>((cb) => sftp.close(handle, cb)).catch(() => {});
  }
  return hash.digest('hex');
}

/** The promise, marked handled: its failure is read later (settleAll), not reported as unhandled meanwhile. */
function observed<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

/** Waits for all; throws the first failure (after all ended: no request left running unobserved). */
async function settleAll(work: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(work);
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
}

async function writeRemote(sftp: SFTPWrapper, file: string, data: Buffer): Promise<void> {
  const handle = await call<Buffer>((cb) => sftp.open(file, 'w', { mode: 0o600 }, cb));
  try {
    await call<void>((cb) => sftp.write(handle, data, 0, data.length, 0, cb));
  } finally {
    await call<void>((cb) => sftp.close(handle, cb)).catch(() => {});
  }
}
