/** amber verify: checks an evidence bundle (directory or archive) against its signed manifest. */
import { promises as fsp } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadConfig } from '../config';
import { DEFAULTS } from '../defaults';
import { publicKeyPath } from '../incident/signing';
import { verifyBundle, type VerifyResult } from '../incident/verify';
import { clean } from './format';
import { OutputWriter } from './output';
import { UsageError } from './usage';

export const KEY_USAGE = `  --key PUBKEY.pem            the public key (PEM) the signature must verify with
  -c, --config FILE           or the one the agent of this configuration publishes: <dataDir>/keys/signing-key.pub.pem
                              (neither: the default data dir's, ${DEFAULTS.dataDir})`;

export const VERIFY_USAGE = `usage: amber verify BUNDLE [--key PUBKEY.pem] [--config FILE] [--json]
  BUNDLE                      an incident's directory (<dataDir>/incidents/<id>) or its archive (<id>.tar.gz)
${KEY_USAGE}
  --json                      the result as one JSON object
exits 0 when every artifact and the signature match the manifest, 1 otherwise`;

export const KEY_OPTIONS = {
  key: { type: 'string' },
  config: { type: 'string', short: 'c' },
} as const;

/**
 * The public key to trust: --key, else the one published in the configured
 * data dir. `required`: a missing key is an error; otherwise null (inspect
 * shows the bundle, its signature unchecked).
 */
export async function publicKeyFromOptions(
  values: { key?: string; config?: string },
  env: NodeJS.ProcessEnv,
  required: boolean,
): Promise<{ pem: string; file: string } | null> {
  const file = values.key ?? publicKeyPath(loadConfig({ file: values.config, env }).dataDir);
  let pem: string;
  try {
    const st = await fsp.stat(file);
    if (!st.isFile()) throw Object.assign(new Error('not a regular file'), { code: 'ENOTFILE' });
    if (st.size > 64 * 1024) throw new Error(`${st.size} bytes: not a public key file`);
    pem = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if (!required && values.key === undefined && (e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    const hint = values.key === undefined ? ' (an agent publishes it on its first start; or pass --key PUBKEY.pem)' : '';
    throw new Error(`public key ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (e as Error).message}${hint}`);
  }
  return { pem, file };
}

/** One bundle argument, as the commands take it. */
export function bundleArgument(positionals: string[], usage: string): string {
  if (positionals.length !== 1) throw new UsageError(`${positionals.length === 0 ? 'which bundle?' : 'one bundle at a time'}\n${usage}`);
  return positionals[0];
}

export async function verifyCommand(argv: string[], out: NodeJS.WritableStream, _err: NodeJS.WritableStream, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: { ...KEY_OPTIONS, json: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    out.write(`${VERIFY_USAGE}\n`);
    return 0;
  }
  const bundle = bundleArgument(positionals, VERIFY_USAGE);
  const key = (await publicKeyFromOptions(values, env, true))!;
  const result = await verifyBundle(bundle, key.pem);
  const output = new OutputWriter(out);
  output.write(values.json ? `${JSON.stringify({ bundle, key: key.file, ...result })}\n` : formatVerify(bundle, key.file, result));
  await output.flush();
  return result.ok ? 0 : 1;
}

/** What was checked, one line each: the artifacts, then what is wrong beyond them, then the signature and the verdict. */
export function formatVerify(bundle: string, keyFile: string, r: VerifyResult): string {
  const lines: string[] = [`bundle     ${clean(bundle)} (${r.source})`, `key        ${clean(keyFile)}`];
  const byPath = new Map<string, VerifyResult['problems']>();
  for (const p of r.problems) byPath.set(p.path, [...(byPath.get(p.path) ?? []), p]);
  const shown = new Set<VerifyResult['problems'][number]>();
  for (const c of r.checked) {
    if (c.ok) {
      lines.push(`ok         ${clean(c.path)}  ${c.size} bytes  sha256 ${c.sha256}`);
      continue;
    }
    for (const p of byPath.get(c.path) ?? []) {
      shown.add(p);
      lines.push(`FAILED     ${clean(c.path)}  ${p.problem}: ${clean(p.detail)}`);
    }
  }
  for (const p of r.problems) {
    if (!shown.has(p)) lines.push(`FAILED     ${clean(p.path)}  ${p.problem}: ${clean(p.detail)}`);
  }
  lines.push(`signature  ${r.signature === 'valid' ? 'valid' : r.signature.toUpperCase()}`);
  const n = r.problems.length;
  lines.push(
    r.ok
      ? `verified: ${r.checked.length} artifacts and the signature match the manifest`
      : `FAILED: ${n} problem${n === 1 ? '' : 's'} (${r.problems.map((p) => `${p.problem} ${clean(p.path)}`).join(', ')})`,
  );
  return `${lines.join('\n')}\n`;
}
