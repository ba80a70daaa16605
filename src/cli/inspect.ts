/** amber inspect: a readable summary of an evidence bundle (directory or archive). */
import { parseArgs } from 'node:util';
import { readRegular } from '../buffer/datadir';
import { grepCore } from '../incident/core-grep';
import { DEFAULT_TIMELINE_LINES, formatReport, inspectBundle, type CoreGrep } from '../incident/inspect';
import type { MapsFile } from '../incident/memory';
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

/** A maps file beside a core is a few MB at most (one line per mapping); a bigger one is not read. */
const MAX_MAPS_BYTES = 64 << 20;
/** Hits counted per core (inspect shows the first DEFAULT_GREP_MATCHES of them). */
const MAX_HITS = 1000;

/**
 * The memory search behind --grep: grepCore, with the regions of the maps
 * beside the core (memory/<pid>.maps.json) so that [heap] and [stack] are
 * named; without that file the regions are named by the core alone.
 */
export const coreGrep: CoreGrep = async (corePath, needle) => grepCore(corePath, needle, { maxHits: MAX_HITS, regions: await regionsBeside(corePath) });

/** The maps file's regions (start and name), as far as they have that shape; undefined when there is no such file. */
export async function regionsBeside(corePath: string): Promise<Array<{ start: string; path: string }> | undefined> {
  if (!corePath.endsWith('.core')) return undefined;
  let maps: Partial<MapsFile>;
  try {
    maps = JSON.parse((await readRegular(corePath.replace(/\.core$/, '.maps.json'), MAX_MAPS_BYTES)).toString('utf8')) as Partial<MapsFile>;
  } catch {
    return undefined; // missing or unreadable: the bundle's verification already says which
  }
  if (!Array.isArray(maps.regions)) return undefined;
  return maps.regions
    .filter((r) => typeof r === 'object' && r !== null && typeof r.start === 'string' && typeof r.path === 'string' && r.path !== '')
    .map((r) => ({ start: r.start, path: r.path }));
}

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
  const key = await publicKeyFromOptions(values, env, false);
  if (!key) note(err, 'amber: no public key found (--key PUBKEY.pem): the signature is not checked\n');
  const report = await inspectBundle(bundle, {
    publicKey: key?.pem ?? null,
    timelineLines,
    ...(values.grep !== undefined ? { grep: { needle: values.grep, search: coreGrep } } : {}),
  });
  const output = new OutputWriter(out);
  output.write(values.json ? `${JSON.stringify(report)}\n` : formatReport(report));
  await output.flush();
  return 0;
}
