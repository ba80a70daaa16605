/**
 * Container metadata on disk, beside the event buffer: one small JSON file
 * per container in <dataDir>/containers/, so events keep only their container
 * ID (the buffer's bytes per event do not grow) and a data dir copied
 * elsewhere still answers which pod, image and name an event's container had.
 *
 * Files are owner-only, created exclusively (O_EXCL|O_NOFOLLOW: a link planted
 * in the directory is never followed) and renamed into place, so readers
 * never see half a file; reads are bounded and validated (a copied data dir
 * is untrusted input).
 */
import { randomBytes } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { z } from 'zod';
import type { ContainerMetadata } from './metadata';
import { readJsonIfExists } from './metadata-files';

export const CONTAINERS_DIR = 'containers';
const ID = /^[0-9a-f]{64}$/;
const FILE = /^([0-9a-f]{64})\.json$/;
/** Labels and overlay paths included, a container's file is a few KiB; this leaves room and stops garbage. */
const MAX_FILE_BYTES = 256 * 1024;
const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;

const str = z.string().max(64 * 1024);
const metadataSchema = z.strictObject({
  containerId: z.string().regex(ID),
  runtime: z.enum(['podman', 'containerd', 'cri-o', 'docker', 'unknown']),
  name: str,
  image: str,
  imageId: str,
  startedAt: str,
  initPid: z.number().int().min(0),
  overlay: z.strictObject({ upperdir: str, lowerdirs: z.array(str).max(512), workdir: str }).nullable(),
  pod: z
    .strictObject({ name: str, namespace: str, uid: str, labels: z.record(z.string().max(1024), str) })
    .nullable(),
  removedAt: str,
  errors: z.array(str).max(64),
});

function isIdFile(name: string): boolean {
  return FILE.test(name);
}

export class MetadataDir {
  private constructor(readonly dir: string) {}

  /**
   * The containers/ directory of a data dir. With create, made owner-only if
   * absent; either way it must be a real directory, not a symlink.
   */
  static async open(dataDir: string, { create = false } = {}): Promise<MetadataDir> {
    const dir = path.join(dataDir, CONTAINERS_DIR);
    if (create) await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 });
    const st = await fs.promises.lstat(dir);
    if (!st.isDirectory()) throw new Error(`${dir} is not a directory (a symlink or file is not followed)`);
    return new MetadataDir(dir);
  }

  /** Writes (or replaces) a container's file: a fresh exclusive temp file renamed over the old one. */
  async write(md: ContainerMetadata): Promise<void> {
    if (!ID.test(md.containerId)) throw new Error(`not a container ID: ${JSON.stringify(md.containerId)}`);
    const bytes = Buffer.from(JSON.stringify(md) + '\n');
    if (bytes.length > MAX_FILE_BYTES) throw new Error(`metadata of ${md.containerId} is ${bytes.length} bytes, above ${MAX_FILE_BYTES}`);
    const tmp = path.join(this.dir, `.tmp-${md.containerId}-${randomBytes(6).toString('hex')}`);
    const fh = await fs.promises.open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    try {
      await fh.writeFile(bytes);
      await fh.close();
      // rename replaces a link at the target itself, never what it points to
      await fs.promises.rename(tmp, path.join(this.dir, `${md.containerId}.json`));
    } catch (err) {
      await fh.close().catch(() => {});
      await fs.promises.rm(tmp, { force: true });
      throw err;
    }
  }

  /** A container's metadata, undefined when there is no file; rejects on a file that is not valid metadata of that ID. */
  async read(containerId: string): Promise<ContainerMetadata | undefined> {
    if (!ID.test(containerId)) return undefined;
    const file = path.join(this.dir, `${containerId}.json`);
    const json = await readJsonIfExists(file, MAX_FILE_BYTES);
    if (json === undefined) return undefined;
    const parsed = metadataSchema.safeParse(json);
    if (!parsed.success) throw new Error(`${file}: not container metadata: ${parsed.error.issues[0]?.message ?? ''} at ${parsed.error.issues[0]?.path.join('.') ?? ''}`);
    if (parsed.data.containerId !== containerId) throw new Error(`${file} holds the metadata of ${parsed.data.containerId}`);
    return parsed.data;
  }

  /**
   * Every container's metadata, for queries of a data dir (live or copied).
   * Bad files are reported in `errors` and skipped; they never hide the others.
   */
  async readAll(): Promise<{ byId: Map<string, ContainerMetadata>; errors: string[] }> {
    const byId = new Map<string, ContainerMetadata>();
    const errors: string[] = [];
    for (const name of (await fs.promises.readdir(this.dir)).filter(isIdFile)) {
      const id = name.slice(0, 64);
      try {
        const md = await this.read(id);
        if (md) byId.set(id, md);
      } catch (err) {
        errors.push(err instanceof Error ? err.message : String(err));
      }
    }
    return { byId, errors };
  }

  /** Removes the files of containers gone before `before` (ISO 8601 comparison); returns how many. */
  async pruneRemovedBefore(before: Date): Promise<number> {
    let removed = 0;
    const { byId } = await this.readAll();
    for (const [id, md] of byId) {
      if (md.removedAt !== '' && Date.parse(md.removedAt) < before.getTime()) {
        await fs.promises.rm(path.join(this.dir, `${id}.json`), { force: true });
        removed++;
      }
    }
    return removed;
  }
}

/** What an event shows of its container, joined at read time (never stored per event). */
export interface ContainerFields {
  runtime: string;
  /** The container's name. */
  container: string;
  image: string;
  /** "" outside Kubernetes. */
  pod: string;
  namespace: string;
}

/**
 * The event with its container's name, image, runtime, pod and namespace,
 * for display and filters (--pod, --namespace, --image). Host events and
 * containers nothing is known of come back as they are (the same object).
 */
export function withMetadata<E extends { containerId: string }>(
  event: E,
  lookup: (containerId: string) => ContainerMetadata | undefined,
): E | (E & ContainerFields) {
  if (event.containerId === '') return event;
  const md = lookup(event.containerId);
  if (md === undefined) return event;
  return { ...event, ...containerFields(md) };
}

/** What an event shows of a container (withMetadata's fields, in its order). */
export function containerFields(md: ContainerMetadata): ContainerFields {
  return { runtime: md.runtime, container: md.name, image: md.image, pod: md.pod?.name ?? '', namespace: md.pod?.namespace ?? '' };
}

/**
 * A filter's container lookup (src/filter.ts) over metadata by ID. The fields
 * are made once per metadata object (the API joins every event it sends).
 */
export function fieldsLookup(get: (containerId: string) => ContainerMetadata | undefined): (containerId: string) => ContainerFields | undefined {
  const made = new WeakMap<ContainerMetadata, ContainerFields>();
  return (id) => {
    const md = get(id);
    if (md === undefined) return undefined;
    let fields = made.get(md);
    if (fields === undefined) made.set(md, (fields = containerFields(md)));
    return fields;
  };
}
