/**
 * Shipping bundle archives to a real SFTP server: Debian's sshd run by the
 * test on loopback (chrooted internal-sftp, its own host and client keys).
 */
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SftpSink, type SftpSinkOptions } from '../../src/incident/sinks/sftp';
import { UploadQueue } from '../../src/incident/uploads';
import { TestSshd } from '../helpers/sshd';
import { recordingLogger, tempDataDir, waitFor, writeArchive } from '../helpers/uploads';

const MiB = 1024 * 1024;
let sshd: TestSshd;
const cleanups: Array<() => Promise<void> | void> = [];

beforeAll(async () => {
  sshd = await TestSshd.start();
});
afterAll(async () => {
  await sshd?.cleanup();
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  for (const name of readdirSync(sshd.uploadDir)) rmSync(path.join(sshd.uploadDir, name));
});

function sinkOptions(extra: Partial<SftpSinkOptions> = {}): SftpSinkOptions {
  return {
    host: '127.0.0.1',
    port: sshd.port,
    username: 'root',
    privateKeyFile: sshd.clientKeyFile,
    hostKeyFingerprints: [sshd.hostKeyFingerprint],
    remoteDir: sshd.remoteDir,
    ...extra,
  };
}

async function queueWith(extra: Partial<SftpSinkOptions> = {}) {
  const dataDir = tempDataDir();
  cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
  const { log, lines } = recordingLogger();
  const sink = await SftpSink.create(sinkOptions(extra));
  const queue = new UploadQueue({ dataDir, sinks: [sink], log, retry: { initialMs: 250, maxMs: 500 } });
  cleanups.push(() => queue.close());
  return { dataDir, queue, lines };
}

describe('SFTP sink', () => {
  it('uploads to a temporary name, checks it, renames it into place next to a sha256 sidecar', async () => {
    const { dataDir, queue } = await queueWith();
    const archive = writeArchive(dataDir, 'inc-sftp', 3 * MiB + 5);
    await queue.start();
    await queue.enqueue(archive.id, archive.path, archive);
    const st = await queue.settled(archive.id);
    expect(st.sinks.sftp).toMatchObject({
      pending: false,
      failed: false,
      attempts: 1,
      lastError: null,
      remote: `sftp://root@127.0.0.1:${sshd.port}/upload/inc-sftp.tar.gz`,
    });
    expect(readdirSync(sshd.uploadDir).sort()).toEqual(['inc-sftp.tar.gz', 'inc-sftp.tar.gz.sha256']);
    expect(readFileSync(path.join(sshd.uploadDir, 'inc-sftp.tar.gz')).equals(archive.bytes)).toBe(true);
    expect(readFileSync(path.join(sshd.uploadDir, 'inc-sftp.tar.gz.sha256'), 'utf8')).toBe(`${archive.sha256}  inc-sftp.tar.gz\n`);
    expect(statSync(path.join(sshd.uploadDir, 'inc-sftp.tar.gz')).mode & 0o777).toBe(0o600);
  });

  it('refuses a host key that is not pinned, and refuses to start with no pin unless told to accept any key', async () => {
    const { dataDir, queue } = await queueWith({ hostKeyFingerprints: [sshd.otherKeyFingerprint] });
    const archive = writeArchive(dataDir, 'inc-mitm', 1024);
    await queue.start();
    await queue.enqueue(archive.id, archive.path, archive);
    const s = await waitFor('a failed attempt', () => {
      const x = queue.status(archive.id)!.sinks.sftp;
      return x.lastError !== null ? x : undefined;
    });
    expect(s.lastError).toBe(`sftp 127.0.0.1:${sshd.port}: host key ${sshd.hostKeyFingerprint} is not one of the pinned hostKeyFingerprints: refused`);
    expect(s).toMatchObject({ pending: true, uploadedAt: null });
    expect(readdirSync(sshd.uploadDir)).toEqual([]);

    await expect(SftpSink.create(sinkOptions({ hostKeyFingerprints: [] }))).rejects.toThrow(
      'sftp sink: give hostKeyFingerprints (ssh-keygen -lf <host key>.pub), or set acceptAnyHostKey to accept an unknown key',
    );
    await expect(SftpSink.create(sinkOptions({ hostKeyFingerprints: ['MD5:aa:bb'] }))).rejects.toThrow('is not SHA256:<base64>');
  });

  it('retries when sshd is stopped mid-upload and completes after it is restarted', async () => {
    const { dataDir, queue, lines } = await queueWith();
    const archive = writeArchive(dataDir, 'inc-sshd-crash', 48 * MiB);
    const partial = path.join(sshd.uploadDir, '.inc-sshd-crash.tar.gz.part');
    await queue.start();
    await queue.enqueue(archive.id, archive.path, archive);
    // halfway: the temporary file has some of the bytes
    await waitFor('the upload under way', () => {
      try {
        return statSync(partial).size > 0 ? true : undefined;
      } catch {
        return undefined;
      }
    });
    await sshd.stop();
    const failed = await waitFor('a failed attempt', () => {
      const x = queue.status(archive.id)!.sinks.sftp;
      return x.lastError !== null ? x : undefined;
    });
    expect(failed).toMatchObject({ pending: true, attempts: 1, uploadedAt: null });
    expect(statSync(partial).size).toBeLessThan(archive.size);
    expect(readdirSync(sshd.uploadDir)).toEqual(['.inc-sshd-crash.tar.gz.part']);

    await sshd.start();
    const st = await queue.settled(archive.id);
    const retries = lines.filter((l) => l.msg === 'upload failed: will retry' && l.id === archive.id).length;
    expect(st.sinks.sftp).toMatchObject({ pending: false, lastError: null, attempts: retries + 1 });
    expect(readdirSync(sshd.uploadDir).sort()).toEqual(['inc-sshd-crash.tar.gz', 'inc-sshd-crash.tar.gz.sha256']);
    expect(readFileSync(path.join(sshd.uploadDir, 'inc-sshd-crash.tar.gz')).equals(archive.bytes)).toBe(true);
  });
});
