/**
 * Writes an evidence bundle: <dataDir>/incidents/.tmp-<id>/ while the capture
 * fills it, each artifact hashed from the file as written (streamed, never
 * read whole), then manifest.json + manifest.sig, a rename to <id>/, and the
 * archive <id>.tar.gz beside it. A bundle the agent did not finish (killed
 * mid-capture) keeps its .tmp- name: listBundles shows it as incomplete and
 * cleanIncompleteBundles clears it.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { createExclusive, ensureDir, openRegular, readRegular } from '../buffer/datadir';
import { newWindowId } from '../buffer/freeze';
import { readdirIfExists } from '../buffer/segment';
import { AMBER_VERSION } from '../api/version';
import {
  ARTIFACT_KINDS,
  INCIDENTS_DIR,
  MANIFEST_FILE,
  MANIFEST_VERSION,
  SIGNATURE_FILE,
  type Artifact,
  type ArtifactKind,
  type Manifest,
} from './manifest';
import type { SigningKey } from './signing';
import { packDirectory } from './tar';

export const TMP_PREFIX = '.tmp-';
export const ARCHIVE_SUFFIX = '.tar.gz';
/** A manifest larger than this is not one of ours (verify and list refuse to read it). */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;
const HASH_CHUNK_BYTES = 1024 * 1024;

/** The fields of the manifest the capture decides; the writer adds version, id, tool, artifacts and the key. */
export type ManifestFields = Omit<Manifest, 'version' | 'id' | 'tool' | 'artifacts' | 'publicKey'>;

/** What finish() made. */
export interface FinishedBundle {
  id: string;
  dir: string;
  archive: string;
  manifest: Manifest;
  /** manifest.json's exact bytes (what manifest.sig signs). */
  manifestBytes: Buffer;
}

/**
 * Why a relative path cannot be an artifact's, or null when it can: '/'-separated,
 * relative, no empty, '.' or '..' part, no NUL or backslash; never the manifest's own files.
 */
export function artifactPathProblem(rel: string): string | null {
  if (typeof rel !== 'string' || rel === '') return 'an empty path';
  if (rel.startsWith('/')) return 'an absolute path';
  if (/[\0\\]/.test(rel)) return 'a path with a NUL or backslash';
  if (rel.split('/').some((p) => p === '' || p === '.' || p === '..')) return 'a path with an empty, "." or ".." part';
  if (rel === MANIFEST_FILE || rel === SIGNATURE_FILE) return 'the manifest\'s own file';
  return null;
}

/** sha256 (hex) and length of what `chunks` yields, streamed. */
export async function hashStream(chunks: AsyncIterable<Buffer>): Promise<{ sha256: string; size: number }> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of chunks) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { sha256: hash.digest('hex'), size };
}

/** An open file's content in chunks from offset 0 (positional reads: the handle's offset is not used). */
export async function* fileChunks(fh: fsp.FileHandle, chunkBytes = HASH_CHUNK_BYTES): AsyncGenerator<Buffer> {
  const buf = Buffer.alloc(chunkBytes);
  for (let pos = 0; ; ) {
    const { bytesRead } = await fh.read(buf, 0, chunkBytes, pos);
    if (bytesRead === 0) return;
    pos += bytesRead;
    // a copy: the consumer may keep it while the next read fills buf
    yield Buffer.from(buf.subarray(0, bytesRead));
  }
}

/** The manifest as its file holds it: fixed key order, artifacts sorted by path, two-space indent, a final newline. */
export function manifestBytes(m: Manifest): Buffer {
  const artifacts = [...m.artifacts]
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
    .map((a) => ({ path: a.path, kind: a.kind, size: a.size, sha256: a.sha256, ...(a.pid !== undefined ? { pid: a.pid } : {}) }));
  const ordered: Manifest = {
    version: m.version,
    id: m.id,
    createdAt: m.createdAt,
    node: m.node,
    trigger: m.trigger,
    container: m.container,
    window: m.window,
    tool: m.tool,
    artifacts,
    publicKey: m.publicKey,
  };
  return Buffer.from(`${JSON.stringify(ordered, null, 2)}\n`, 'utf8');
}

export class BundleWriter {
  private readonly artifacts = new Map<string, Artifact>();
  private finished = false;

  private constructor(
    readonly id: string,
    /** <dataDir>/incidents */
    readonly incidentsDir: string,
    /** Where artifacts are written until finish(): <incidentsDir>/.tmp-<id> */
    readonly dir: string,
  ) {}

  /** A new bundle directory (.tmp-<id>, 0700) under <dataDir>/incidents/. */
  static async create(dataDir: string, createdMs = Date.now()): Promise<BundleWriter> {
    const incidentsDir = path.join(dataDir, INCIDENTS_DIR);
    await ensureDir(incidentsDir, false);
    const id = newWindowId(createdMs);
    const dir = path.join(incidentsDir, TMP_PREFIX + id);
    // not recursive: an existing name (a planted link) fails instead of being written through
    await fsp.mkdir(dir, { mode: 0o700 });
    return new BundleWriter(id, incidentsDir, dir);
  }

  /**
   * The absolute path for an artifact's file, its parent folders created (0700,
   * never through a link). For capture steps that write the file themselves
   * (createExclusive, or native code); then add() it.
   */
  async pathFor(rel: string): Promise<string> {
    this.checkOpen();
    const problem = artifactPathProblem(rel);
    if (problem) throw new Error(`bundle ${this.id}: refusing artifact "${rel}": ${problem}`);
    const parts = rel.split('/');
    let at = this.dir;
    for (const part of parts.slice(0, -1)) {
      at = path.join(at, part);
      await ensureDir(at, false);
    }
    return path.join(this.dir, rel);
  }

  /** Writes `data` (bytes, or chunks streamed from a source) as a new artifact file and adds it. */
  async write(rel: string, kind: ArtifactKind, data: Buffer | string | AsyncIterable<Buffer>, pid?: number): Promise<Artifact> {
    const file = await this.pathFor(rel);
    const fh = await createExclusive(file, 0o600);
    try {
      if (typeof data === 'string' || Buffer.isBuffer(data)) await fh.writeFile(data);
      else for await (const chunk of data) await fh.write(chunk);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return this.add(rel, kind, pid);
  }

  /**
   * Adds a file already written under the bundle: its size and sha256 are read
   * from the file itself (streamed), and it becomes read-only. Refuses a path
   * outside the bundle, a link, anything not a regular file, a path added twice.
   */
  async add(rel: string, kind: ArtifactKind, pid?: number): Promise<Artifact> {
    this.checkOpen();
    const problem = artifactPathProblem(rel);
    if (problem) throw new Error(`bundle ${this.id}: refusing artifact "${rel}": ${problem}`);
    if (!(ARTIFACT_KINDS as readonly string[]).includes(kind)) throw new Error(`bundle ${this.id}: unknown artifact kind "${kind}"`);
    if (this.artifacts.has(rel)) throw new Error(`bundle ${this.id}: artifact "${rel}" added twice`);
    await this.checkParents(rel);
    const fh = await openRegular(path.join(this.dir, rel));
    let hashed: { sha256: string; size: number };
    try {
      hashed = await hashStream(fileChunks(fh));
      await fh.chmod(0o400); // evidence: not to be changed after it is hashed (through the descriptor, never a path)
    } finally {
      await fh.close();
    }
    const artifact: Artifact = { path: rel, kind, size: hashed.size, sha256: hashed.sha256, ...(pid !== undefined ? { pid } : {}) };
    this.artifacts.set(rel, artifact);
    return artifact;
  }

  /** The artifacts added so far, by path. */
  list(): Artifact[] {
    return [...this.artifacts.values()].sort((a, b) => (a.path < b.path ? -1 : 1));
  }

  /**
   * Writes manifest.json and its signature, renames the bundle to <id>/ and packs
   * <id>.tar.gz beside it. Refuses (leaving the bundle incomplete, nothing
   * deleted) when the directory holds a file that was not added or an added
   * file's size changed since.
   */
  /** Signs the bundle; packs <id>.tar.gz unless `pack` is false (the caller packs later: packBundle). */
  async finish(fields: ManifestFields, key: SigningKey, options: { pack?: boolean } = {}): Promise<FinishedBundle> {
    this.checkOpen();
    const onDisk = await walkFiles(this.dir);
    const unlisted = onDisk.filter((f) => !this.artifacts.has(f.path) || f.type !== 'file');
    if (unlisted.length > 0) {
      throw new Error(`bundle ${this.id}: not added as artifacts: ${unlisted.map((f) => f.path).join(', ')}`);
    }
    for (const f of onDisk) {
      const a = this.artifacts.get(f.path)!;
      if (f.size !== a.size) throw new Error(`bundle ${this.id}: ${f.path} is ${f.size} bytes, ${a.size} when it was added`);
    }
    const manifest: Manifest = {
      version: MANIFEST_VERSION,
      id: this.id,
      ...fields,
      tool: { name: 'amber', version: AMBER_VERSION },
      artifacts: this.list(),
      publicKey: key.publicKeyPem,
    };
    const bytes = manifestBytes(manifest);
    await writeNew(path.join(this.dir, MANIFEST_FILE), bytes);
    await writeNew(path.join(this.dir, SIGNATURE_FILE), key.sign(bytes));
    const finalDir = path.join(this.incidentsDir, this.id);
    await fsp.rename(this.dir, finalDir);
    this.finished = true;
    const archive = options.pack === false ? path.join(this.incidentsDir, this.id + ARCHIVE_SUFFIX) : await packBundle(this.incidentsDir, this.id);
    return { id: this.id, dir: finalDir, archive, manifest: JSON.parse(bytes.toString('utf8')) as Manifest, manifestBytes: bytes };
  }

  /** Removes the unfinished bundle (a capture that gave up). */
  async abandon(): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await fsp.rm(this.dir, { recursive: true, force: true });
  }

  private checkOpen(): void {
    if (this.finished) throw new Error(`bundle ${this.id} is finished: nothing more can be added`);
  }

  /** Every folder on the way is a real directory of ours, not a link planted to lead elsewhere. */
  private async checkParents(rel: string): Promise<void> {
    let at = this.dir;
    for (const part of rel.split('/').slice(0, -1)) {
      at = path.join(at, part);
      const st = await fsp.lstat(at);
      if (!st.isDirectory()) throw new Error(`bundle ${this.id}: refusing artifact "${rel}": ${part} is not a directory`);
    }
  }
}

/**
 * Packs <incidentsDir>/<id>/ into <id>.tar.gz (entries under "<id>/"), through
 * a temporary name so a half-written archive never has the final one.
 */
export async function packBundle(incidentsDir: string, id: string): Promise<string> {
  const archive = path.join(incidentsDir, id + ARCHIVE_SUFFIX);
  const tmp = path.join(incidentsDir, `${TMP_PREFIX}${id}${ARCHIVE_SUFFIX}`);
  await fsp.unlink(tmp).catch(() => {}); // a leftover of a crash (unlink removes the name, never a link's target)
  await packDirectory(path.join(incidentsDir, id), tmp, { gzip: true, prefix: id });
  await fsp.rename(tmp, archive);
  return archive;
}

export interface WalkedFile {
  /** '/'-separated, relative to the walked directory. */
  path: string;
  type: 'file' | 'symlink' | 'other';
  size: number;
}

/** Every entry under `dir` except directories (lstat: a link is reported, never followed), sorted by path. */
export async function walkFiles(dir: string): Promise<WalkedFile[]> {
  const out: WalkedFile[] = [];
  const walk = async (rel: string): Promise<void> => {
    const names = await fsp.readdir(rel ? path.join(dir, rel) : dir);
    for (const name of names) {
      const childRel = rel ? `${rel}/${name}` : name;
      const st = await fsp.lstat(path.join(dir, childRel));
      if (st.isDirectory()) await walk(childRel);
      else out.push({ path: childRel, type: st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other', size: st.size });
    }
  };
  await walk('');
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

async function writeNew(file: string, data: Buffer): Promise<void> {
  const fh = await createExclusive(file, 0o400);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** What listBundles tells of a manifest. */
export interface ManifestSummary {
  createdAt: string;
  trigger: { kind: string; rule?: string; reason: string };
  containerId: string | null;
  artifacts: number;
  /** The artifacts' total size. */
  bytes: number;
}

export interface BundleInfo {
  id: string;
  /** The bundle's directory, null when only the archive is left. */
  dir: string | null;
  /** <id>.tar.gz, null while (or when) not packed. */
  archive: string | null;
  /** null when the manifest is absent (incomplete) or cannot be read (see problem). */
  manifest: ManifestSummary | null;
  /** Signed and renamed to its final name; false for a capture that never finished (.tmp-<id>). */
  complete: boolean;
  /** Why the manifest could not be read, for a complete bundle. */
  problem?: string;
}

/**
 * The bundles under <dataDir>/incidents, sorted by id (by time): complete ones
 * (with their archive when packed) and incomplete ones left by a capture that
 * never finished. Reads only each manifest; verifies nothing.
 */
export async function listBundles(dataDir: string): Promise<BundleInfo[]> {
  const incidentsDir = path.join(dataDir, INCIDENTS_DIR);
  const names = new Set(await readdirIfExists(incidentsDir));
  const byId = new Map<string, BundleInfo>();
  for (const name of names) {
    // the incidents dir also holds the agent's own state (.uploads, .frozen, .responses): never bundles
    if (name.startsWith('.') && !name.startsWith(TMP_PREFIX)) continue;
    const st = await fsp.lstat(path.join(incidentsDir, name)).catch(() => null);
    if (!st) continue;
    if (name.startsWith(TMP_PREFIX)) {
      if (!st.isDirectory()) continue; // a half-written archive: cleanIncompleteBundles clears it
      const id = name.slice(TMP_PREFIX.length);
      byId.set(id, { id, dir: path.join(incidentsDir, name), archive: null, manifest: null, complete: false });
    } else if (st.isDirectory()) {
      const info: BundleInfo = { id: name, dir: path.join(incidentsDir, name), archive: null, manifest: null, complete: true };
      try {
        info.manifest = summarize(JSON.parse((await readRegular(path.join(info.dir!, MANIFEST_FILE), MAX_MANIFEST_BYTES)).toString('utf8')));
      } catch (err) {
        info.problem = `${MANIFEST_FILE}: ${(err as Error).message}`;
      }
      byId.set(name, { ...info, archive: byId.get(name)?.archive ?? null });
    } else if (st.isFile() && name.endsWith(ARCHIVE_SUFFIX)) {
      const id = name.slice(0, -ARCHIVE_SUFFIX.length);
      const existing = byId.get(id);
      const archive = path.join(incidentsDir, name);
      if (existing) existing.archive = archive;
      else byId.set(id, { id, dir: null, archive, manifest: null, complete: true });
    }
  }
  return [...byId.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

function summarize(m: unknown): ManifestSummary {
  const o = m as Partial<Manifest>;
  if (typeof o !== 'object' || o === null || !Array.isArray(o.artifacts) || typeof o.trigger !== 'object' || o.trigger === null) {
    throw new Error('not a bundle manifest');
  }
  return {
    createdAt: String(o.createdAt),
    trigger: { kind: String(o.trigger.kind), ...(o.trigger.rule !== undefined ? { rule: String(o.trigger.rule) } : {}), reason: String(o.trigger.reason) },
    containerId: o.container ? String(o.container.id) : null,
    artifacts: o.artifacts.length,
    bytes: o.artifacts.reduce((s, a) => s + (Number.isFinite(a?.size) ? a.size : 0), 0),
  };
}

/**
 * Removes what captures left unfinished (.tmp-<id> directories and half-written
 * archives), and re-packs a complete bundle whose archive was never written.
 * Returns the names removed and the ids packed.
 */
export async function cleanIncompleteBundles(dataDir: string): Promise<{ removed: string[]; packed: string[] }> {
  const incidentsDir = path.join(dataDir, INCIDENTS_DIR);
  const removed: string[] = [];
  for (const name of await readdirIfExists(incidentsDir)) {
    if (!name.startsWith(TMP_PREFIX)) continue;
    await fsp.rm(path.join(incidentsDir, name), { recursive: true, force: true });
    removed.push(name);
  }
  const packed: string[] = [];
  for (const b of await listBundles(dataDir)) {
    if (b.complete && b.dir && !b.archive && b.manifest) {
      await packBundle(incidentsDir, b.id);
      packed.push(b.id);
    }
  }
  return { removed: removed.sort(), packed };
}
