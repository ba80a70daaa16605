/**
 * Checks an evidence bundle against its manifest: the signature over
 * manifest.json's exact bytes (with the key the caller trusts, never the one
 * the manifest names), the manifest's shape, every artifact's size and
 * sha256, and that nothing is there the manifest does not list. A directory
 * is walked without following links; an archive is read as a stream and
 * hashed entry by entry, never extracted.
 */
import { constants as C, promises as fsp } from 'node:fs';
import type { KeyObject } from 'node:crypto';
import * as path from 'node:path';
import { createGunzip } from 'node:zlib';
import { z } from 'zod';
import { openRegular, readRegular } from '../buffer/datadir';
import { artifactPathProblem, fileChunks, hashStream, MAX_MANIFEST_BYTES, walkFiles } from './bundle';
import { ARTIFACT_KINDS, MANIFEST_FILE, MANIFEST_VERSION, SIGNATURE_FILE, type Manifest } from './manifest';
import { parsePublicKey, SIGNATURE_BYTES, verifySignature } from './signing';
import { readTar, type TarEntry } from './tar';

/**
 * valid; invalid (not this key's signature of these bytes); missing (no manifest.sig);
 * malformed (not 64 bytes); unchecked (no manifest to check it against, or no key given).
 */
export type SignatureStatus = 'valid' | 'invalid' | 'missing' | 'malformed' | 'unchecked';

export type ProblemKind =
  | 'changed' // sha256 differs
  | 'size' // size differs
  | 'missing' // listed, not there
  | 'extra' // there, not listed
  | 'not-regular' // a link, device, FIFO... where a file should be
  | 'unsafe-path' // an absolute or '..' name (manifest or archive)
  | 'duplicate' // the same name twice in an archive
  | 'manifest' // manifest.json unreadable or not of the contract's shape
  | 'signature' // the signature does not hold
  | 'unreadable'; // a file or the archive could not be read

export interface VerifyProblem {
  path: string;
  problem: ProblemKind;
  /** In words, for the report. */
  detail: string;
}

export interface CheckedArtifact {
  path: string;
  kind: string;
  /** What the manifest says. */
  size: number;
  sha256: string;
  /** What was found (null: not there or not read). */
  actualSize: number | null;
  actualSha256: string | null;
  ok: boolean;
}

export interface VerifyResult {
  ok: boolean;
  source: 'directory' | 'archive';
  /** The manifest when it could be read and has the contract's shape (trust it only when ok). */
  manifest: Manifest | null;
  checked: CheckedArtifact[];
  signature: SignatureStatus;
  problems: VerifyProblem[];
}

/** The manifest's shape (src/incident/manifest.ts). */
const artifactSchema = z
  .object({
    path: z.string(),
    kind: z.enum(ARTIFACT_KINDS),
    size: z.number().int().nonnegative(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, 'not a lowercase hex sha256'),
    pid: z.number().int().positive().optional(),
  })
  .strict();
const manifestSchema = z.object({
  version: z.literal(MANIFEST_VERSION),
  id: z.string().min(1),
  createdAt: z.string(),
  node: z.string(),
  trigger: z.object({
    kind: z.enum(['drift', 'rule', 'manual']),
    rule: z.string().optional(),
    reason: z.string(),
    event: z.record(z.string(), z.unknown()).optional(),
    requestedBy: z.string().optional(),
    joined: z.number().int().nonnegative().optional(),
  }),
  container: z.object({ id: z.string(), metadata: z.record(z.string(), z.unknown()).nullable() }).nullable(),
  window: z.object({
    from: z.number(),
    to: z.number(),
    beforeMs: z.number(),
    afterMs: z.number(),
    events: z.number().int().nonnegative(),
    complete: z.boolean(),
  }),
  tool: z.object({ name: z.literal('amber'), version: z.string() }),
  artifacts: z.array(artifactSchema),
  publicKey: z.string(),
});

/** What the manifest fails of the contract's shape, one line per issue; empty when it conforms. */
export function manifestShapeProblems(value: unknown): string[] {
  const r = manifestSchema.safeParse(value);
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.') || '(top level)'}: ${i.message}`);
}

/** What was found where the manifest's files should be. */
interface Found {
  type: 'file' | 'directory' | 'symlink' | 'hardlink' | 'other';
  size: number;
  /** Computed lazily for a directory, at read time for an archive. */
  hash?: () => Promise<{ sha256: string; size: number }>;
}

/**
 * Checks the bundle directory or archive at `target` with the public key the
 * caller trusts (PEM SPKI). Without a key (null) everything but the signature
 * is checked, the signature is "unchecked" and the result is never ok.
 */
export async function verifyBundle(target: string, publicKey: string | KeyObject | null): Promise<VerifyResult> {
  const key = typeof publicKey === 'string' ? parsePublicKey(publicKey, 'the public key') : publicKey;
  const st = await fsp.stat(target); // the caller's path: a link to a bundle is followed (nothing inside is)
  if (st.isDirectory()) return verifyDirectory(target, key);
  if (st.isFile()) return verifyArchive(target, key);
  throw new Error(`${target}: not a bundle directory or archive`);
}

async function verifyDirectory(dir: string, key: KeyObject | null): Promise<VerifyResult> {
  const found = new Map<string, Found>();
  for (const f of await walkFiles(dir)) {
    found.set(f.path, {
      type: f.type,
      size: f.size,
      hash: async () => {
        const fh = await openRegular(path.join(dir, f.path));
        try {
          return await hashStream(fileChunks(fh));
        } finally {
          await fh.close();
        }
      },
    });
  }
  const read = async (name: string, max: number) => (found.get(name)?.type === 'file' ? readRegular(path.join(dir, name), max) : null);
  const manifest = await read(MANIFEST_FILE, MAX_MANIFEST_BYTES);
  const signature = await read(SIGNATURE_FILE, 4096);
  return compare('directory', manifest, signature, found, key, []);
}

const ZEROS = Buffer.alloc(1024 * 1024);

/** One part of an entry's content in order: stored bytes at their offset, or a hole of `hole` zero bytes. */
export type EntryPart = { offset: number; data: Buffer; hole?: undefined } | { offset: number; hole: number; data?: undefined };

/** An entry's content as parts: a sparse entry's stored segments with the holes between them. */
export async function* entryParts(entry: TarEntry): AsyncGenerator<EntryPart> {
  const segments = entry.sparse ?? [{ offset: 0, size: entry.size }];
  const it = entry.data()[Symbol.asyncIterator]();
  let pending: Buffer = Buffer.alloc(0);
  let pos = 0;
  for (const seg of segments) {
    if (seg.offset < pos || seg.offset + seg.size > entry.size) throw new Error('sparse map out of order or past the file size');
    if (seg.offset > pos) yield { offset: pos, hole: seg.offset - pos };
    pos = seg.offset;
    for (let left = seg.size; left > 0; ) {
      if (pending.length === 0) {
        const r = await it.next();
        if (r.done) throw new Error("the entry's data ends before its size");
        pending = r.value;
      }
      const data = pending.subarray(0, Math.min(left, pending.length));
      pending = pending.subarray(data.length);
      yield { offset: pos, data };
      left -= data.length;
      pos += data.length;
    }
  }
  if (entry.size > pos) yield { offset: pos, hole: entry.size - pos };
}

/** The zero bytes of a hole, in chunks. */
export function* zeros(n: number): Generator<Buffer> {
  for (let left = n; left > 0; left -= ZEROS.length) yield ZEROS.subarray(0, Math.min(left, ZEROS.length));
}

/** An entry's content as extracted (sparse holes as zeros). */
export async function* entryContent(entry: TarEntry): AsyncGenerator<Buffer> {
  for await (const part of entryParts(entry)) {
    if (part.data) yield part.data;
    else yield* zeros(part.hole);
  }
}

/**
 * The archive's entries by path relative to the bundle: the leading "<id>/"
 * folder (packBundle's prefix) removed. `onEntry` sees each file entry first
 * (to keep what it wants); whatever it does not read is hashed.
 */
export async function readBundleArchive(
  archive: string,
  onFile?: (rel: string, entry: TarEntry) => Promise<{ sha256: string; size: number } | void>,
): Promise<{ found: Map<string, Found>; problems: VerifyProblem[]; manifest: Buffer | null; signature: Buffer | null }> {
  const found = new Map<string, Found>();
  const problems: VerifyProblem[] = [];
  let manifest: Buffer | null = null;
  let signature: Buffer | null = null;
  const fh = await fsp.open(archive, C.O_RDONLY | C.O_NONBLOCK);
  try {
    if (!(await fh.stat()).isFile()) throw new Error(`${archive}: not a regular file`);
    const magic = Buffer.alloc(2);
    await fh.read(magic, 0, 2, 0);
    const raw = fh.createReadStream({ start: 0, autoClose: false });
    const input = magic[0] === 0x1f && magic[1] === 0x8b ? raw.pipe(createGunzip()) : raw;
    raw.on('error', (e) => input.destroy(e));
    let prefix: string | null = null;
    let first = true;
    try {
      for await (const entry of readTar(input)) {
        const name = decodeName(entry.name);
        if (first) {
          first = false;
          if (entry.type === 'directory' && name !== null && !name.includes('/') && artifactPathProblem(name) === null) {
            prefix = name;
            continue;
          }
        }
        let rel = name;
        if (rel !== null && prefix !== null) rel = rel.startsWith(`${prefix}/`) ? rel.slice(prefix.length + 1) : null;
        const shown = name ?? entry.name.toString('latin1');
        if (rel === null || (rel !== MANIFEST_FILE && rel !== SIGNATURE_FILE && artifactPathProblem(rel) !== null)) {
          problems.push({ path: shown, problem: 'unsafe-path', detail: `archive entry "${shown}" is outside the bundle's folder, absolute, or has a ".." part: refused` });
          continue;
        }
        if (found.has(rel)) {
          problems.push({ path: rel, problem: 'duplicate', detail: `the archive holds ${rel} more than once` });
          continue;
        }
        if (entry.type === 'directory') {
          found.set(rel, { type: 'directory', size: 0 });
          continue;
        }
        if (entry.type !== 'file') {
          found.set(rel, { type: entry.type === 'other' ? 'other' : entry.type, size: 0 });
          continue;
        }
        if (rel === MANIFEST_FILE || rel === SIGNATURE_FILE) {
          const bytes = await entry.buffer(rel === MANIFEST_FILE ? MAX_MANIFEST_BYTES : 4096).catch(() => null);
          if (bytes === null) {
            problems.push({ path: rel, problem: 'unreadable', detail: `${rel} in the archive is larger than any Amber writes` });
            continue;
          }
          if (rel === MANIFEST_FILE) manifest = bytes;
          else signature = bytes;
          found.set(rel, { type: 'file', size: bytes.length });
          continue;
        }
        const hashed = (await onFile?.(rel, entry)) ?? (await hashStream(entryContent(entry)));
        found.set(rel, { type: 'file', size: hashed.size, hash: async () => hashed });
      }
    } catch (err) {
      problems.push({ path: path.basename(archive), problem: 'unreadable', detail: `the archive cannot be read: ${(err as Error).message}` });
    } finally {
      input.destroy();
      raw.destroy();
    }
  } finally {
    await fh.close();
  }
  // directories are containers of files, never artifacts themselves
  for (const [rel, f] of found) if (f.type === 'directory') found.delete(rel);
  return { found, problems, manifest, signature };
}

/** verifyBundle for an archive; `onFile` may keep entries (e.g. extract them) as they stream past, returning their hash. */
export async function verifyArchive(
  archive: string,
  key: KeyObject | null,
  onFile?: (rel: string, entry: TarEntry) => Promise<{ sha256: string; size: number } | void>,
): Promise<VerifyResult> {
  const { found, problems, manifest, signature } = await readBundleArchive(archive, onFile);
  return compare('archive', manifest, signature, found, key, problems);
}

function decodeName(raw: Buffer): string | null {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    return null;
  }
}

const TYPE_WORDS: Record<Found['type'], string> = {
  file: 'a regular file',
  directory: 'a directory',
  symlink: 'a symbolic link',
  hardlink: 'a hard link entry',
  other: 'not a regular file (a device, FIFO or socket)',
};

async function compare(
  source: VerifyResult['source'],
  manifestBytes: Buffer | null,
  signatureBytes: Buffer | null,
  found: Map<string, Found>,
  key: KeyObject | null,
  problems: VerifyProblem[],
): Promise<VerifyResult> {
  const checked: CheckedArtifact[] = [];
  let signature: SignatureStatus;
  if (manifestBytes === null) {
    problems.push({ path: MANIFEST_FILE, problem: 'missing', detail: `${MANIFEST_FILE} is not there: nothing to check the bundle against` });
    signature = signatureBytes === null ? 'missing' : 'unchecked';
  } else if (signatureBytes === null) {
    signature = 'missing';
  } else if (signatureBytes.length !== SIGNATURE_BYTES) {
    signature = 'malformed';
  } else if (key === null) {
    signature = 'unchecked';
  } else {
    signature = verifySignature(key, manifestBytes, signatureBytes) ? 'valid' : 'invalid';
  }
  if (signature === 'missing') problems.push({ path: SIGNATURE_FILE, problem: 'missing', detail: `${SIGNATURE_FILE} is not there: the manifest is unsigned` });
  if (signature === 'malformed') {
    problems.push({ path: SIGNATURE_FILE, problem: 'signature', detail: `${SIGNATURE_FILE} is ${signatureBytes!.length} bytes, not a ${SIGNATURE_BYTES}-byte Ed25519 signature` });
  }

  let manifest: Manifest | null = null;
  if (manifestBytes !== null) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(manifestBytes.toString('utf8'));
    } catch (err) {
      problems.push({ path: MANIFEST_FILE, problem: 'manifest', detail: `${MANIFEST_FILE} is not JSON: ${(err as Error).message}` });
    }
    if (parsed !== undefined) {
      const shape = manifestShapeProblems(parsed);
      if (shape.length > 0) problems.push({ path: MANIFEST_FILE, problem: 'manifest', detail: `${MANIFEST_FILE} is not a bundle manifest: ${shape.join('; ')}` });
      else manifest = parsed as Manifest;
    }
  }
  if (signature === 'invalid') {
    const otherKey = manifest !== null && key !== null && !samePublicKey(manifest.publicKey, key);
    problems.push({
      path: MANIFEST_FILE,
      problem: 'signature',
      detail: `${SIGNATURE_FILE} is not the given key's signature of ${MANIFEST_FILE}: ${
        otherKey ? 'the manifest names another public key (signed by another agent, or the wrong --key)' : `${MANIFEST_FILE} or ${SIGNATURE_FILE} was changed`
      }`,
    });
  }

  if (manifest !== null) {
    const listed = new Set<string>();
    for (const a of [...manifest.artifacts].sort((x, y) => (x.path < y.path ? -1 : x.path > y.path ? 1 : 0))) {
      const entry: CheckedArtifact = { path: a.path, kind: a.kind, size: a.size, sha256: a.sha256, actualSize: null, actualSha256: null, ok: false };
      checked.push(entry);
      const unsafe = artifactPathProblem(a.path);
      if (unsafe) {
        problems.push({ path: a.path, problem: 'unsafe-path', detail: `the manifest lists ${unsafe}: not checked` });
        continue;
      }
      if (listed.has(a.path)) {
        problems.push({ path: a.path, problem: 'manifest', detail: `the manifest lists ${a.path} twice` });
        continue;
      }
      listed.add(a.path);
      const f = found.get(a.path);
      if (!f) {
        problems.push({ path: a.path, problem: 'missing', detail: `${a.path} is listed (${a.size} bytes) but not there` });
        continue;
      }
      if (f.type !== 'file' || !f.hash) {
        problems.push({ path: a.path, problem: 'not-regular', detail: `${a.path} is ${TYPE_WORDS[f.type]}` });
        continue;
      }
      let actual: { sha256: string; size: number };
      try {
        actual = await f.hash();
      } catch (err) {
        problems.push({ path: a.path, problem: 'unreadable', detail: `${a.path} cannot be read: ${(err as Error).message}` });
        continue;
      }
      entry.actualSize = actual.size;
      entry.actualSha256 = actual.sha256;
      if (actual.size !== a.size) {
        problems.push({ path: a.path, problem: 'size', detail: `${a.path} is ${actual.size} bytes, the manifest says ${a.size}` });
      } else if (actual.sha256 !== a.sha256) {
        problems.push({ path: a.path, problem: 'changed', detail: `${a.path}: sha256 ${actual.sha256}, the manifest says ${a.sha256}` });
      } else {
        entry.ok = true;
      }
    }
    for (const [rel, f] of found) {
      if (listed.has(rel) || rel === MANIFEST_FILE || rel === SIGNATURE_FILE) continue;
      problems.push({ path: rel, problem: 'extra', detail: `${rel} (${f.type === 'file' ? `${f.size} bytes` : TYPE_WORDS[f.type]}) is not listed in the manifest` });
    }
  }
  problems.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { ok: problems.length === 0 && signature === 'valid' && manifest !== null, source, manifest, checked, signature, problems };
}

function samePublicKey(pem: string, key: KeyObject): boolean {
  try {
    return parsePublicKey(pem, 'the manifest\'s public key').equals(key);
  } catch {
    return false;
  }
}
