/**
 * s3rver (a real S3 HTTP server) as a child process the test owns, on
 * 127.0.0.1 with its own temp storage; stopped by its pid (SIGKILL: a crash,
 * as a server dying mid-upload would) and restartable on the same port.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const S3RVER_BIN = path.resolve(__dirname, '../../node_modules/s3rver/bin/s3rver.js');

/** s3rver's fixed credentials. */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

/** A port free on 127.0.0.1 now (the kernel's pick, released for the server to take). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export class S3rverProcess {
  readonly dir = mkdtempSync(path.join(os.tmpdir(), 'amber-s3rver-'));
  private child: ChildProcess | undefined;

  private constructor(
    readonly port: number,
    readonly bucket: string,
  ) {}

  static async start(bucket = 'evidence'): Promise<S3rverProcess> {
    const s = new S3rverProcess(await freePort(), bucket);
    await s.start();
    return s;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Where s3rver keeps an object's bytes (its file store layout). */
  objectFile(key: string): string {
    return path.join(this.dir, this.bucket, `${key}._S3rver_object`);
  }

  async start(): Promise<void> {
    if (this.child) throw new Error('s3rver already running');
    const child = spawn(process.execPath, [S3RVER_BIN, '-d', this.dir, '-a', '127.0.0.1', '-p', String(this.port), '--silent', '--configure-bucket', this.bucket], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    let out = '';
    await new Promise<void>((resolve, reject) => {
      const onData = (d: Buffer) => {
        out += d.toString();
        if (out.includes('S3rver listening')) resolve();
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      child.once('exit', (code) => reject(new Error(`s3rver exited with ${code} before listening: ${out}`)));
    });
  }

  /** Kills it by its pid and waits for the exit. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    process.kill(child.pid!, 'SIGKILL');
    await exited;
  }

  async cleanup(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
