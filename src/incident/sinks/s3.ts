/**
 * Ships archives to an S3-compatible bucket (AWS, MinIO, Ceph RGW, ...).
 * Archives up to one part go in one PutObject carrying the captured sha256
 * (x-amz-checksum-sha256: the server refuses other bytes); larger ones in a
 * multipart upload with a SHA-256 per part. Every object carries the captured
 * digest as x-amz-meta-sha256 and is checked after the upload with HeadObject
 * (size, that digest, and the server's full-object checksum when it has one).
 * Optional Object Lock retention keeps the evidence from being rewritten.
 */
import {
  HeadObjectCommand,
  type HeadObjectCommandOutput,
  PutObjectCommand,
  type PutObjectCommandInput,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { createHash } from 'node:crypto';
import { abortError, type ArchiveToUpload, checkSent, HashingStream, openArchive, PermanentUploadError, resolveSecret, type Sink, type UploadResult } from './sink';

const MiB = 1024 * 1024;
const DAY_MS = 24 * 3600 * 1000;
/** S3's bounds on a multipart upload. */
const MIN_PART_BYTES = 5 * MiB;
const MAX_PARTS = 10_000;

export const S3_DEFAULTS = {
  region: 'us-east-1',
  prefix: '',
  /** AWS serves virtual-hosted buckets; MinIO, Ceph and most self-hosted servers want path style. */
  forcePathStyle: false,
  /** Archives larger than this go in a multipart upload of parts this big (S3's minimum is 5MiB). */
  partSize: 16 * MiB,
  /** Parts in flight at once (memory: partSize times this). */
  partConcurrency: 2,
  /** A request whose socket is silent this long fails (and is retried by the queue). */
  requestTimeoutMs: 60_000,
  connectTimeoutMs: 10_000,
} as const;

export type ObjectLockMode = 'GOVERNANCE' | 'COMPLIANCE';

export interface S3SinkOptions {
  /** Unique among the sinks; defaults to "s3". */
  name?: string;
  /** e.g. https://minio.example:9000; absent: AWS's endpoint for the region. */
  endpoint?: string;
  region?: string;
  bucket: string;
  /** Prepended to "<id>.tar.gz", e.g. "amber/node-1/". */
  prefix?: string;
  /** Credentials: each inline, from a file, or from an environment variable; none: the SDK's default chain (env, web identity, instance role). */
  accessKeyId?: string;
  accessKeyIdFile?: string;
  accessKeyIdEnv?: string;
  secretAccessKey?: string;
  secretAccessKeyFile?: string;
  secretAccessKeyEnv?: string;
  sessionTokenFile?: string;
  forcePathStyle?: boolean;
  partSize?: number;
  partConcurrency?: number;
  requestTimeoutMs?: number;
  connectTimeoutMs?: number;
  /** Retention set on each object (the bucket must have Object Lock enabled). */
  objectLock?: { mode: ObjectLockMode; retainDays: number };
  /** The clock Object Lock's retain-until date counts from (tests pin it). */
  now?: () => number;
}

export class S3Sink implements Sink {
  readonly name: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly partSize: number;
  private readonly partConcurrency: number;
  private readonly objectLock: S3SinkOptions['objectLock'];
  private readonly now: () => number;

  private constructor(opts: S3SinkOptions, credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string } | undefined) {
    this.name = opts.name ?? 's3';
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ?? S3_DEFAULTS.prefix;
    this.partSize = opts.partSize ?? S3_DEFAULTS.partSize;
    this.partConcurrency = opts.partConcurrency ?? S3_DEFAULTS.partConcurrency;
    this.objectLock = opts.objectLock;
    this.now = opts.now ?? Date.now;
    this.client = new S3Client({
      endpoint: opts.endpoint,
      region: opts.region ?? S3_DEFAULTS.region,
      forcePathStyle: opts.forcePathStyle ?? S3_DEFAULTS.forcePathStyle,
      credentials,
      // checksums only where this sink asks for them (SHA-256): the SDK's default CRC32 trailers
      // (aws-chunked bodies) are not understood by many S3-compatible servers
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        requestTimeout: opts.requestTimeoutMs ?? S3_DEFAULTS.requestTimeoutMs,
        connectionTimeout: opts.connectTimeoutMs ?? S3_DEFAULTS.connectTimeoutMs,
      },
    });
  }

  /** Reads the credentials (files, environment) and checks the options; throws naming what is wrong, never a secret. */
  static async create(opts: S3SinkOptions, env: NodeJS.ProcessEnv = process.env): Promise<S3Sink> {
    if (!opts.bucket) throw new Error('s3 sink: bucket is required');
    const partSize = opts.partSize ?? S3_DEFAULTS.partSize;
    if (!Number.isInteger(partSize) || partSize < MIN_PART_BYTES) throw new Error(`s3 sink: partSize must be a whole number of bytes, at least ${MIN_PART_BYTES} (5MiB)`);
    const lock = opts.objectLock;
    if (lock) {
      if (lock.mode !== 'GOVERNANCE' && lock.mode !== 'COMPLIANCE') throw new Error(`s3 sink: objectLock.mode must be GOVERNANCE or COMPLIANCE, not ${String(lock.mode)}`);
      if (!Number.isInteger(lock.retainDays) || lock.retainDays < 1) throw new Error('s3 sink: objectLock.retainDays must be a whole number of days, at least 1');
    }
    const accessKeyId = await resolveSecret({ value: opts.accessKeyId, file: opts.accessKeyIdFile, env: opts.accessKeyIdEnv }, 's3 sink accessKeyId', env);
    const secretAccessKey = await resolveSecret(
      { value: opts.secretAccessKey, file: opts.secretAccessKeyFile, env: opts.secretAccessKeyEnv },
      's3 sink secretAccessKey',
      env,
    );
    if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
      throw new Error('s3 sink: give both accessKeyId and secretAccessKey (inline, file or env), or neither to use the default credential chain');
    }
    const sessionToken = opts.sessionTokenFile ? await resolveSecret({ file: opts.sessionTokenFile }, 's3 sink sessionToken', env) : undefined;
    return new S3Sink(opts, accessKeyId && secretAccessKey ? { accessKeyId, secretAccessKey, sessionToken } : undefined);
  }

  keyOf(id: string): string {
    return `${this.prefix}${id}.tar.gz`;
  }

  async upload(archive: ArchiveToUpload, signal: AbortSignal): Promise<UploadResult> {
    const key = this.keyOf(archive.id);
    const remote = `s3://${this.bucket}/${key}`;
    // a previous attempt may have stored it and died before its state was written
    const existing = await this.head(key, signal);
    if (existing && this.matches(existing, archive) === null) return { remote };

    const fh = await openArchive(archive);
    try {
      const params: PutObjectCommandInput = {
        Bucket: this.bucket,
        Key: key,
        ContentType: 'application/gzip',
        Metadata: { sha256: archive.sha256 },
      };
      if (this.objectLock) {
        params.ObjectLockMode = this.objectLock.mode;
        params.ObjectLockRetainUntilDate = new Date(this.now() + this.objectLock.retainDays * DAY_MS);
      }
      if (archive.size <= this.partSize) {
        const body = await fh.readFile();
        const digest = createHash('sha256').update(body).digest();
        if (body.length !== archive.size || digest.toString('hex') !== archive.sha256) {
          throw new PermanentUploadError(`archive ${archive.path} is not what was captured: sha256 ${digest.toString('hex')}, captured ${archive.sha256}`);
        }
        params.Body = body;
        params.ContentLength = body.length;
        // the captured digest itself: a server that checks it refuses any other bytes
        params.ChecksumAlgorithm = 'SHA256';
        params.ChecksumSHA256 = digest.toString('base64');
        await this.client.send(new PutObjectCommand(params), { abortSignal: signal });
      } else {
        const sent = new HashingStream();
        const read = fh.createReadStream({ autoClose: false });
        read.on('error', (err) => sent.destroy(err));
        read.pipe(sent);
        params.Body = sent;
        params.ChecksumAlgorithm = 'SHA256';
        const upload = new Upload({
          client: this.client,
          params,
          // S3 takes at most 10000 parts
          partSize: Math.max(this.partSize, Math.ceil(archive.size / MAX_PARTS)),
          queueSize: this.partConcurrency,
        });
        const onAbort = () => void upload.abort().catch(() => {});
        signal.addEventListener('abort', onAbort, { once: true });
        try {
          await upload.done();
        } finally {
          signal.removeEventListener('abort', onAbort);
        }
        checkSent(archive, sent);
      }
    } catch (err) {
      if (signal.aborted) throw abortError(signal);
      throw err;
    } finally {
      await fh.close();
    }

    const stored = await this.head(key, signal);
    if (!stored) throw new Error(`${remote}: not found right after its upload`);
    const wrong = this.matches(stored, archive);
    if (wrong !== null) throw new Error(`${remote}: verification failed: ${wrong}`);
    return { remote };
  }

  /** The object's HeadObject, or null when there is none. */
  private async head(key: string, signal: AbortSignal): Promise<HeadObjectCommandOutput | null> {
    try {
      return await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key, ChecksumMode: 'ENABLED' }), { abortSignal: signal });
    } catch (err) {
      if (signal.aborted) throw abortError(signal);
      if (err instanceof S3ServiceException && (err.$metadata.httpStatusCode === 404 || err.name === 'NotFound')) return null;
      throw err;
    }
  }

  /** Why the stored object is not the archive, or null when it is. */
  private matches(head: HeadObjectCommandOutput, archive: ArchiveToUpload): string | null {
    if (head.ContentLength !== archive.size) return `size ${head.ContentLength}, expected ${archive.size}`;
    const meta = head.Metadata?.sha256;
    if (meta !== archive.sha256) return `x-amz-meta-sha256 ${meta ?? '(none)'}, expected ${archive.sha256}`;
    // a multipart object's checksum is of its parts' checksums ("...-N"): only a full-object one compares
    const sum = head.ChecksumSHA256;
    if (sum && head.ChecksumType !== 'COMPOSITE' && !sum.includes('-')) {
      const hex = Buffer.from(sum, 'base64').toString('hex');
      if (hex !== archive.sha256) return `server checksum sha256 ${hex}, expected ${archive.sha256}`;
    }
    return null;
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
