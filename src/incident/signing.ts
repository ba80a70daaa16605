/**
 * The key that signs evidence bundles: Ed25519 (node:crypto), the manifest's
 * exact bytes signed raw, so `openssl pkeyutl -verify -rawin` checks it with
 * the published public half. Either the operator's key file (PEM PKCS#8) or
 * one generated on first start into <dataDir>/keys/, owner-only.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject, sign, verify } from 'node:crypto';
import { constants as C, promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { createExclusive, describeFsError, ensureDir, NotRegularFileError, openRegular, readRegular, writeFileAtomic } from '../buffer/datadir';

export const KEYS_DIR = 'keys';
/** The generated private key (PEM PKCS#8), mode 0600. */
export const PRIVATE_KEY_FILE = 'signing-key.pem';
/** Its public half (PEM SPKI): what `amber verify` and openssl check signatures with. */
export const PUBLIC_KEY_FILE = 'signing-key.pub.pem';
/** An Ed25519 signature's length. */
export const SIGNATURE_BYTES = 64;
const MAX_KEY_FILE_BYTES = 64 * 1024;

/** A key file Amber refuses; the message names the file, the reason and the fix. */
export class SigningKeyError extends Error {
  override name = 'SigningKeyError';
}

export interface SigningKey {
  /** The public half, PEM (SPKI), as published beside the private key and in each manifest. */
  readonly publicKeyPem: string;
  /** Where the private key was read from (or generated into). */
  readonly file: string;
  /** Where its public half is published: <dataDir>/keys/signing-key.pub.pem. */
  readonly publicKeyFile: string;
  /** True when this call generated it. */
  readonly generated: boolean;
  /** The raw 64-byte Ed25519 signature of `data`. */
  sign(data: Buffer): Buffer;
}

/** <dataDir>/keys/signing-key.pub.pem: where `amber verify --config` looks. */
export function publicKeyPath(dataDir: string): string {
  return path.join(dataDir, KEYS_DIR, PUBLIC_KEY_FILE);
}

/**
 * The agent's signing key. `keyFile` (from the configuration): read it, following
 * the operator's path (a Kubernetes secret's file is a link), refused unless it is
 * a regular file no group or other user can access holding an Ed25519 key.
 * Without one: <dataDir>/keys/signing-key.pem, generated on first start
 * (created exclusively, never through a link). Either way the public half is
 * published at publicKeyPath(dataDir).
 */
export async function loadOrCreateSigningKey(dataDir: string, keyFile?: string): Promise<SigningKey> {
  await ensureDir(dataDir, true);
  const keysDir = path.join(dataDir, KEYS_DIR);
  await ensureDir(keysDir, false);
  let privateKey: KeyObject;
  let file: string;
  let generated = false;
  if (keyFile) {
    file = keyFile;
    privateKey = parsePrivateKey(await readKeyFile(keyFile, true), keyFile);
  } else {
    file = path.join(keysDir, PRIVATE_KEY_FILE);
    let pem: Buffer | null = null;
    try {
      pem = await readKeyFile(file, false);
    } catch (err) {
      if (!(err instanceof SigningKeyError && (err.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT')) throw err;
    }
    if (pem) {
      privateKey = parsePrivateKey(pem, file);
    } else {
      privateKey = await generateKeyFile(file);
      generated = true;
    }
  }
  const publicKeyPem = createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }).toString();
  const publicKeyFile = publicKeyPath(dataDir);
  await publishPublicKey(publicKeyFile, publicKeyPem);
  return {
    publicKeyPem,
    file,
    publicKeyFile,
    generated,
    sign: (data: Buffer) => sign(null, data, privateKey),
  };
}

/** True when `signature` is `publicKeyPem`'s Ed25519 signature of exactly `data`. */
export function verifySignature(publicKeyPem: string | KeyObject, data: Buffer, signature: Buffer): boolean {
  const key = typeof publicKeyPem === 'string' ? parsePublicKey(publicKeyPem, 'the public key') : publicKeyPem;
  return signature.length === SIGNATURE_BYTES && verify(null, data, key, signature);
}

/** A PEM (SPKI) Ed25519 public key; `source` names it in the error. */
export function parsePublicKey(pem: string | Buffer, source: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new SigningKeyError(`${source}: not a PEM public key (${(err as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new SigningKeyError(`${source}: an ${key.asymmetricKeyType} key; bundles are signed with Ed25519`);
  }
  return key;
}

/** The key file's bytes, refused when it is not a regular file or others may read it. */
async function readKeyFile(file: string, followLink: boolean): Promise<Buffer> {
  let fh: fsp.FileHandle;
  try {
    // the operator's own path may be a link; a FIFO must not block us (O_NONBLOCK), fstat below checks the type
    fh = followLink ? await fsp.open(file, C.O_RDONLY | C.O_NONBLOCK) : await openRegular(file);
  } catch (err) {
    const why = err instanceof NotRegularFileError ? err.what === 'a symbolic link' ? 'is a symbolic link: refusing to follow it' : `is ${err.what}, not a regular file` : describeFsError(err);
    throw new SigningKeyError(`signing key ${file}: ${why}`, { cause: err });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new SigningKeyError(`signing key ${file}: not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new SigningKeyError(
        `signing key ${file} is accessible by group or others (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}): ` +
          `refusing to use it (chmod 600 ${file}; for a Kubernetes secret, defaultMode: 0400)`,
      );
    }
    if (st.size > MAX_KEY_FILE_BYTES) throw new SigningKeyError(`signing key ${file}: ${st.size} bytes, not a key file`);
    const buf = Buffer.alloc(st.size);
    const { bytesRead } = await fh.read(buf, 0, st.size, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

function parsePrivateKey(pem: Buffer, file: string): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ERR_MISSING_PASSPHRASE' ? 'is encrypted; Amber needs an unencrypted key' : `is not a PEM private key (${(err as Error).message})`;
    throw new SigningKeyError(`signing key ${file} ${why} (make one: openssl genpkey -algorithm ed25519 -out ${file})`);
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new SigningKeyError(
      `signing key ${file} is an ${key.asymmetricKeyType} key; bundles are signed with Ed25519 (openssl genpkey -algorithm ed25519 -out ${file})`,
    );
  }
  return key;
}

/**
 * A new key into `file`: written whole under a temporary name, then linked to
 * its name (link fails if anything has that name, so a planted file or link
 * is never written through or replaced), so a crash never leaves half a key.
 */
async function generateKeyFile(file: string): Promise<KeyObject> {
  const { privateKey } = generateKeyPairSync('ed25519');
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' });
  const tmp = `${file}.tmp`;
  await fsp.unlink(tmp).catch(() => {}); // a leftover of a crash: unlink removes the name, never a link's target
  const fh = await createExclusive(tmp, 0o600);
  try {
    await fh.writeFile(pem);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await fsp.link(tmp, file);
  } catch (err) {
    throw new SigningKeyError(`signing key ${file}: cannot create it: ${describeFsError(err)}`);
  } finally {
    await fsp.unlink(tmp).catch(() => {});
  }
  return privateKey;
}

/** Writes the public half unless the file already holds exactly it. */
async function publishPublicKey(file: string, pem: string): Promise<void> {
  const current = await readRegular(file, MAX_KEY_FILE_BYTES).catch(() => null);
  if (current?.toString() === pem) return;
  // a stale or planted file is replaced by rename, never written through
  await writeFileAtomic(file, Buffer.from(pem), 0o644);
}
