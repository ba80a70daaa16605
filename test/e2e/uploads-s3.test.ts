/**
 * Shipping bundle archives to a real S3 server (s3rver on loopback, a child
 * process the test starts and kills), through a recording proxy so the
 * headers on the wire are asserted (s3rver ignores Object Lock and checksums).
 */
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { enforceRetention } from '../../src/incident/retention';
import { S3Sink, type S3SinkOptions } from '../../src/incident/sinks/s3';
import { UploadQueue } from '../../src/incident/uploads';
import { RecordingProxy } from '../helpers/recording-proxy';
import { S3RVER_CREDENTIALS, S3rverProcess } from '../helpers/s3rver';
import { recordingLogger, tempDataDir, waitFor, writeArchive } from '../helpers/uploads';

const MiB = 1024 * 1024;
const PREFIX = 'amber/node-1/';

let server: S3rverProcess;
let proxy: RecordingProxy;
const cleanups: Array<() => Promise<void> | void> = [];

beforeAll(async () => {
  server = await S3rverProcess.start('evidence');
  proxy = await RecordingProxy.start(server.port);
});
afterAll(async () => {
  await proxy?.close();
  await server?.cleanup();
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  proxy.onRequest = undefined;
  proxy.requests.length = 0;
});

function sinkOptions(extra: Partial<S3SinkOptions> = {}): S3SinkOptions {
  return {
    endpoint: proxy.endpoint,
    region: 'us-east-1',
    bucket: server.bucket,
    prefix: PREFIX,
    accessKeyIdEnv: 'AMBER_TEST_S3_KEY',
    secretAccessKeyEnv: 'AMBER_TEST_S3_SECRET',
    forcePathStyle: true,
    partSize: 5 * MiB,
    ...extra,
  };
}
const ENV = { AMBER_TEST_S3_KEY: S3RVER_CREDENTIALS.accessKeyId, AMBER_TEST_S3_SECRET: S3RVER_CREDENTIALS.secretAccessKey };

async function queueWith(dataDir: string, extra: Partial<S3SinkOptions> = {}) {
  const { log, lines } = recordingLogger();
  const sink = await S3Sink.create(sinkOptions(extra), ENV);
  const queue = new UploadQueue({ dataDir, sinks: [sink], log, retry: { initialMs: 250, maxMs: 500 } });
  cleanups.push(() => queue.close());
  return { queue, lines };
}

function newDataDir(): string {
  const dir = tempDataDir();
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The object's bytes, read back from s3rver directly (not through the proxy). */
async function getObject(key: string): Promise<Buffer> {
  const client = new S3Client({ endpoint: server.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: S3RVER_CREDENTIALS });
  try {
    const out = await client.send(new GetObjectCommand({ Bucket: server.bucket, Key: key }));
    return Buffer.from(await out.Body!.transformToByteArray());
  } finally {
    client.destroy();
  }
}

const sha256b64 = (b: Buffer) => createHash('sha256').update(b).digest('base64');

describe('S3 sink', () => {
  it('uploads a small archive in one PUT carrying its sha256, and a large one in parts; the objects are the files', async () => {
    const dataDir = newDataDir();
    const { queue } = await queueWith(dataDir);
    const small = writeArchive(dataDir, 'inc-small', 100 * 1024 + 7);
    const large = writeArchive(dataDir, 'inc-large', 12 * MiB + 123);
    await queue.start();
    await queue.enqueue(small.id, small.path, small);
    await queue.enqueue(large.id, large.path, large);

    for (const a of [small, large]) {
      const st = await queue.settled(a.id);
      expect(st.sinks.s3).toMatchObject({ pending: false, failed: false, attempts: 1, lastError: null, remote: `s3://evidence/${PREFIX}${a.id}.tar.gz` });
      expect(st.sinks.s3.uploadedAt).not.toBeNull();
      expect(queue.isUploaded(a.id)).toBe(true);
      expect((await getObject(`${PREFIX}${a.id}.tar.gz`)).equals(a.bytes)).toBe(true);
    }

    const smallPath = `/evidence/${PREFIX}${small.id}.tar.gz`;
    const largePath = `/evidence/${PREFIX}${large.id}.tar.gz`;
    const puts = proxy.requests.filter((r) => r.method === 'PUT' && r.url.startsWith(smallPath));
    expect(puts).toHaveLength(1);
    expect(puts[0].headers['x-amz-checksum-sha256']).toBe(sha256b64(small.bytes));
    expect(puts[0].headers['x-amz-meta-sha256']).toBe(small.sha256);
    expect(puts[0].headers['content-length']).toBe(String(small.size));

    const created = proxy.requests.filter((r) => r.method === 'POST' && r.url.startsWith(`${largePath}?uploads`));
    expect(created).toHaveLength(1);
    expect(created[0].headers['x-amz-meta-sha256']).toBe(large.sha256);
    const parts = proxy.requests.filter((r) => r.method === 'PUT' && r.url.startsWith(largePath) && r.url.includes('partNumber='));
    expect(parts.map((p) => p.headers['content-length'])).toEqual([String(5 * MiB), String(5 * MiB), String(2 * MiB + 123)]);
    // each part carries its own SHA-256
    expect(parts[0].headers['x-amz-checksum-sha256']).toBe(sha256b64(large.bytes.subarray(0, 5 * MiB)));
    expect(proxy.requests.filter((r) => r.method === 'POST' && r.url.startsWith(largePath) && r.url.includes('uploadId='))).toHaveLength(1);

    // the state on disk says the same
    const onDisk = JSON.parse(readFileSync(path.join(dataDir, 'incidents/.uploads/inc-large.json'), 'utf8'));
    expect(onDisk.sinks.s3.remote).toBe(`s3://evidence/${PREFIX}inc-large.tar.gz`);
    expect(onDisk.sha256).toBe(large.sha256);
  });

  it('sends Object Lock retention as x-amz-object-lock-mode and -retain-until-date, on PUT and on a multipart upload', async () => {
    const dataDir = newDataDir();
    const now = Date.UTC(2031, 0, 1, 12, 0, 0);
    const { queue } = await queueWith(dataDir, { objectLock: { mode: 'COMPLIANCE', retainDays: 30 }, now: () => now, prefix: 'locked/' });
    const small = writeArchive(dataDir, 'inc-lock-small', 4096);
    const large = writeArchive(dataDir, 'inc-lock-large', 6 * MiB);
    await queue.start();
    await queue.enqueue(small.id, small.path, small);
    await queue.enqueue(large.id, large.path, large);
    expect((await queue.settled(small.id)).sinks.s3.uploadedAt).not.toBeNull();
    expect((await queue.settled(large.id)).sinks.s3.uploadedAt).not.toBeNull();

    const put = proxy.requests.filter((r) => r.method === 'PUT' && r.url.startsWith('/evidence/locked/inc-lock-small.tar.gz'));
    const create = proxy.requests.filter((r) => r.method === 'POST' && r.url.startsWith('/evidence/locked/inc-lock-large.tar.gz?uploads'));
    expect(put).toHaveLength(1);
    expect(create).toHaveLength(1);
    for (const r of [put[0], create[0]]) {
      expect(r.headers['x-amz-object-lock-mode']).toBe('COMPLIANCE');
      expect(r.headers['x-amz-object-lock-retain-until-date']).toBe('2031-01-31T12:00:00Z');
    }
    // S3 wants an integrity checksum on every request that writes locked bytes
    const parts = proxy.requests.filter((r) => r.method === 'PUT' && r.url.includes('inc-lock-large.tar.gz?partNumber='));
    expect(parts).toHaveLength(2);
    for (const p of parts) expect(p.headers['x-amz-checksum-sha256']).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    expect((await getObject('locked/inc-lock-large.tar.gz')).equals(large.bytes)).toBe(true);
  });

  it('retries when the server dies mid-upload and completes once it is back on the same port', async () => {
    const dataDir = newDataDir();
    const { queue, lines } = await queueWith(dataDir);
    const large = writeArchive(dataDir, 'inc-crash', 11 * MiB);
    let killed = false;
    proxy.onRequest = async (r) => {
      // the second part: the upload is halfway
      if (!killed && r.url.includes('inc-crash.tar.gz?partNumber=2')) {
        killed = true;
        await server.stop();
      }
    };
    await queue.start();
    await queue.enqueue(large.id, large.path, large);
    const failed = await waitFor('a failed attempt', () => {
      const s = queue.status(large.id)!.sinks.s3;
      return s.lastError !== null ? s : undefined;
    });
    expect(killed).toBe(true);
    expect(failed).toMatchObject({ pending: true, attempts: 1, uploadedAt: null, failed: false });
    expect(lines.some((l) => l.msg === 'upload failed: will retry' && l.id === 'inc-crash' && l.attempts === 1)).toBe(true);

    await server.start();
    const st = await queue.settled(large.id);
    expect(st.sinks.s3).toMatchObject({ pending: false, lastError: null, remote: `s3://evidence/${PREFIX}inc-crash.tar.gz` });
    // every failed attempt logged, then the one that worked
    const retries = lines.filter((l) => l.msg === 'upload failed: will retry' && l.id === 'inc-crash').length;
    expect(retries).toBeGreaterThanOrEqual(1);
    expect(st.sinks.s3.attempts).toBe(retries + 1);
    expect((await getObject(`${PREFIX}inc-crash.tar.gz`)).equals(large.bytes)).toBe(true);
  });

  it('resumes after a restart: a queue closed with an upload pending, a new queue on the same data dir finishes it', async () => {
    const dataDir = newDataDir();
    const archive = writeArchive(dataDir, 'inc-resume', 300 * 1024);
    await server.stop();
    try {
      const first = await queueWith(dataDir);
      await first.queue.start();
      await first.queue.enqueue(archive.id, archive.path, archive);
      await waitFor('a failed attempt', () => (first.queue.status(archive.id)!.sinks.s3.lastError !== null ? true : undefined));
      await first.queue.close();
      // closed: no more attempts (retries were due every 125-500ms)
      const attempts = first.queue.status(archive.id)!.sinks.s3.attempts;
      await new Promise((r) => setTimeout(r, 1000));
      expect(first.queue.status(archive.id)!.sinks.s3.attempts).toBe(attempts);
      expect(JSON.parse(readFileSync(path.join(dataDir, 'incidents/.uploads/inc-resume.json'), 'utf8')).sinks.s3.attempts).toBe(attempts);
      const saved = JSON.parse(readFileSync(path.join(dataDir, 'incidents/.uploads/inc-resume.json'), 'utf8'));
      expect(saved.sinks.s3.pending).toBe(true);
      expect(saved.sinks.s3.uploadedAt).toBeNull();
      expect(saved.sinks.s3.attempts).toBeGreaterThanOrEqual(1);
    } finally {
      await server.start();
    }

    const second = await queueWith(dataDir);
    expect(second.queue.status(archive.id)).toBeNull(); // nothing known before start
    await second.queue.start();
    expect(second.lines.some((l) => l.msg === 'resuming uploads' && l.bundles === 1)).toBe(true);
    const st = await second.queue.settled(archive.id);
    expect(st.sinks.s3).toMatchObject({ pending: false, lastError: null, remote: `s3://evidence/${PREFIX}inc-resume.tar.gz` });
    expect((await getObject(`${PREFIX}inc-resume.tar.gz`)).equals(archive.bytes)).toBe(true);
  });

  it('retention removes uploaded bundles and keeps the one the queue still owes', async () => {
    const dataDir = newDataDir();
    const { queue, lines } = await queueWith(dataDir);
    const [one, two, three] = ['inc-r1', 'inc-r2', 'inc-r3'].map((id) => {
      mkdirSync(path.join(dataDir, 'incidents', id));
      writeFileSync(path.join(dataDir, 'incidents', id, 'manifest.json'), '{}');
      return writeArchive(dataDir, id, 10_000);
    });
    await queue.start();
    for (const a of [one, two]) {
      await queue.enqueue(a.id, a.path, a);
      await queue.settled(a.id);
    }
    await server.stop();
    try {
      await queue.enqueue(three.id, three.path, three);
      await waitFor('a failed attempt', () => (queue.status(three.id)!.sinks.s3.lastError !== null ? true : undefined));
      const r = await enforceRetention(dataDir, { maxCount: 0, log: recordingLogger().log }, queue);
      expect(r.removed).toEqual(['inc-r1', 'inc-r2']);
      expect(r.kept).toEqual(['inc-r3']);
      expect(readdirSync(path.join(dataDir, 'incidents')).sort()).toEqual(['.uploads', 'inc-r3', 'inc-r3.tar.gz']);
      expect(readdirSync(path.join(dataDir, 'incidents', '.uploads'))).toEqual(['inc-r3.json']);
      expect(queue.status('inc-r1')).toBeNull();
    } finally {
      await server.start();
    }
    expect((await queue.settled(three.id)).sinks.s3.uploadedAt).not.toBeNull();
    expect(lines.filter((l) => l.msg === 'uploaded and verified').map((l) => l.id)).toEqual(['inc-r1', 'inc-r2', 'inc-r3']);
  });

  it('refuses an archive that is not what was captured, without retrying', async () => {
    const dataDir = newDataDir();
    const { queue } = await queueWith(dataDir);
    const archive = writeArchive(dataDir, 'inc-changed', 2048);
    await queue.start();
    await queue.enqueue(archive.id, archive.path, { size: archive.size, sha256: '0'.repeat(64) });
    const st = await queue.settled(archive.id);
    expect(st.sinks.s3).toMatchObject({ pending: false, failed: true, attempts: 1, uploadedAt: null });
    expect(st.sinks.s3.lastError).toBe(`archive ${archive.path} is not what was captured: sha256 ${archive.sha256}, captured ${'0'.repeat(64)}`);
    expect(proxy.requests.filter((r) => r.method === 'PUT')).toHaveLength(0);
  });
});
