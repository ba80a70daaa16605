/** amber inspect: a readable summary of an evidence bundle (directory or archive). */
import { parseArgs } from 'node:util';
import { DEFAULT_TIMELINE_LINES, formatReport, inspectBundle, type CoreGrep } from '../incident/inspect';
import { integerOption } from './filter-options';
import { note, OutputWriter } from './output';
import { UsageError } from './usage';
import { bundleArgument, KEY_OPTIONS, KEY_USAGE, publicKeyFromOptions } from './verify';

export const INSPECT_USAGE = `usage: amber inspect BUNDLE [--key PUBKEY.pem] [--config FILE] [--json] [--lines N] [--grep TEXT]
  BUNDLE                      an incident's directory (<dataDir>/incidents/<id>) or its archive (<id>.tar.gz)
${KEY_USAGE}
                              (no key found: shown with the signature unchecked)
  --json                      the report as one JSON object
  --lines N                   timeline lines around the trigger (default ${DEFAULT_TIMELINE_LINES})
  --grep TEXT                 search the memory cores (memory/<pid>.core) for TEXT`;

/**
 * The memory search behind --grep: grepCore of src/incident/core-grep.ts
 * (branch memory). Null until it is connected: --grep is then refused.
 */
const coreGrep: CoreGrep | null = null;

export async function inspectCommand(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: true,
    options: {
      ...KEY_OPTIONS,
      json: { type: 'boolean', default: false },
      lines: { type: 'string' },
      grep: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    out.write(`${INSPECT_USAGE}\n`);
    return 0;
  }
  const bundle = bundleArgument(positionals, INSPECT_USAGE);
  const timelineLines = values.lines === undefined ? DEFAULT_TIMELINE_LINES : integerOption('--lines', values.lines, 1);
  if (values.grep !== undefined && values.grep === '') throw new UsageError('--grep needs a text to search for');
  const search: CoreGrep | null = coreGrep;
  if (values.grep !== undefined && search === null) throw new UsageError('--grep: this build has no memory search');
  const key = await publicKeyFromOptions(values, env, false);
  if (!key) note(err, 'amber: no public key found (--key PUBKEY.pem): the signature is not checked\n');
  const report = await inspectBundle(bundle, {
    publicKey: key?.pem ?? null,
    timelineLines,
    ...(values.grep !== undefined && search ? { grep: { needle: values.grep, search } } : {}),
  });
  const output = new OutputWriter(out);
  output.write(values.json ? `${JSON.stringify(report)}\n` : formatReport(report));
  await output.flush();
  return 0;
}
