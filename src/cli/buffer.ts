/**
 * `amber buffer query` and `amber buffer stats`: read a data dir offline (no
 * agent needed, a copied data dir works), never writing to it.
 */
import { parseArgs } from 'node:util';
import { EventBuffer } from '../buffer';
import type { ContainerMetadata } from '../containers/metadata';
import { fieldsLookup, MetadataDir, withMetadata } from '../containers/metadata-dir';
import { compileFilter, splitContainerFilter } from '../filter';
import { DEFAULTS } from '../defaults';
import { formatTs, nowNs } from '../time';
import type { BufferStats, VerifyResult } from '../buffer';
import { EVENT_TYPES } from '../sensor/events';
import { FILTER_OPTIONS, FILTER_USAGE, filterFromOptions, integerOption, TIME_OPTIONS, TIME_USAGE } from './filter-options';
import { clean, COLUMN_NAMES, type ColumnName, columnsLayout, DEFAULT_COLUMNS, eventFormatter, parseColumns, parseOutputFormat } from './format';
import { note, OutputWriter } from './output';
import { remoteQuery, SERVER_OPTIONS, SERVER_USAGE, serversFromOptions } from './remote';
import { UsageError } from './usage';

const QUERY_USAGE = `usage: amber buffer query [--server ADDR]... | --data-dir DIR [filter options] [-o columns|json] [--limit N]
${SERVER_USAGE}
  --data-dir DIR              read a data dir (${DEFAULTS.dataDir}, or a copy of one) offline, without an agent
  --type exec,open,...        event types (${EVENT_TYPES.join(', ')})
${TIME_USAGE}
${FILTER_USAGE}
  -o, --output columns|json   a table (default) or JSON lines
  --columns A,B,...           the table's columns, in order (${COLUMN_NAMES.join(', ')};
                              default time,namespace,pod,container,pid,comm,type,details)
  --limit N                   the first N events
`;

/** A query looks back in time: the time comes first. */
const QUERY_COLUMNS: readonly ColumnName[] = ['time', ...DEFAULT_COLUMNS];

const STATS_USAGE = `usage: amber buffer stats [--data-dir DIR] [-o text|json] [--verify]
  --verify: read and check every block (the index alone cannot show damage inside a block);
            exits 1 when a block is damaged
  data dir default: ${DEFAULTS.dataDir}
`;

export async function bufferQuery(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  return run('query', QUERY_USAGE, err, async () => {
    const { values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        'data-dir': { type: 'string' },
        ...SERVER_OPTIONS,
        ...TIME_OPTIONS,
        ...FILTER_OPTIONS,
        type: { type: 'string' },
        output: { type: 'string', short: 'o', default: 'columns' },
        columns: { type: 'string' },
        limit: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      out.write(QUERY_USAGE);
      return 0;
    }
    const format = parseOutputFormat(values.output);
    if (values.columns !== undefined && format !== 'columns') throw new UsageError('--columns applies to -o columns');
    const columns = parseColumns(values.columns, QUERY_COLUMNS);
    const show = eventFormatter(format, columns);
    const filter = filterFromOptions(values, nowNs());
    const limit = values.limit === undefined ? Infinity : integerOption('--limit', values.limit, 1);
    if (values['data-dir'] === undefined) return remoteQuery(
        { ...serversFromOptions(values), filter, format, columns: values.columns === undefined ? undefined : columns, defaultColumns: QUERY_COLUMNS, limit },
        out,
        err,
      );
    if (values.server) throw new UsageError('--data-dir and --server exclude each other');

    const metadata = await readContainers(values['data-dir'], err);
    const known = (id: string) => metadata.get(id);
    // the buffer stores container IDs only: pod, namespace and image are matched after the join
    const { stored, joined } = splitContainerFilter(filter);
    const joinedMatches = joined && compileFilter(joined, fieldsLookup(known));
    const buffer = await EventBuffer.openReadOnly(values['data-dir'], { log: warnTo(err) });
    const output = new OutputWriter(out);
    if (format === 'columns') output.write(`${columnsLayout(columns).header}\n`);
    let left = limit;
    try {
      for await (const all of buffer.queryBatches(stored)) {
        const batch = joinedMatches ? all.filter(joinedMatches) : all;
        const events = batch.length > left ? batch.slice(0, left) : batch;
        left -= events.length;
        let text = '';
        for (const ev of events) text += `${show(withMetadata(ev, known))}\n`;
        const gone = await output.add(text);
        if (gone || left === 0) break;
      }
      await output.flush();
    } finally {
      await buffer.close();
    }
    return 0;
  });
}

export async function bufferStats(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  return run('stats', STATS_USAGE, err, async () => {
    const { values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        'data-dir': { type: 'string', default: DEFAULTS.dataDir },
        output: { type: 'string', short: 'o', default: 'text' },
        verify: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      out.write(STATS_USAGE);
      return 0;
    }
    if (values.output !== 'text' && values.output !== 'json') throw new UsageError(`-o must be text or json, got "${values.output}"`);
    const buffer = await EventBuffer.openReadOnly(values['data-dir'], { log: warnTo(err) });
    try {
      const verify = values.verify ? await buffer.verify() : undefined;
      const stats = buffer.stats();
      const output = new OutputWriter(out);
      output.write(values.output === 'json' ? `${JSON.stringify(verify ? { ...stats, verify } : stats)}\n` : formatStats(stats, verify));
      await output.flush();
      return verify && verify.damagedBlocks > 0 ? 1 : 0;
    } finally {
      await buffer.close();
    }
  });
}

/**
 * The data dir's container metadata (containers/*.json) for the join; a data dir
 * from before it has none. Bad files are reported and the good ones used.
 */
async function readContainers(dataDir: string, err: NodeJS.WritableStream): Promise<Map<string, ContainerMetadata>> {
  let dir: MetadataDir;
  try {
    dir = await MetadataDir.open(dataDir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw e;
  }
  const { byId, errors } = await dir.readAll();
  for (const message of errors) note(err, `amber buffer: warn: container metadata skipped: ${clean(message)}\n`);
  return byId;
}

/** Exit codes: 0 done, 1 the data could not be read, 2 bad arguments. */
async function run(
  command: string,
  usage: string,
  err: NodeJS.WritableStream,
  body: () => Promise<number>,
): Promise<number> {
  try {
    return await body();
  } catch (e) {
    const error = e as Error & { code?: string };
    if (e instanceof UsageError || error.code?.startsWith('ERR_PARSE_ARGS')) {
      note(err, `amber buffer ${command}: ${error.message}\n${usage}`);
      return 2;
    }
    note(err, `amber buffer ${command}: ${error.message}\n`);
    return 1;
  }
}

/** Damage found while reading goes to stderr; routine notes (a live writer's unfinished tail) do not. */
function warnTo(err: NodeJS.WritableStream) {
  return (level: string, msg: string, fields?: Record<string, unknown>) => {
    if (level === 'info') return;
    note(err, `amber buffer: ${level}: ${clean(msg)}${fields ? ` ${clean(JSON.stringify(fields))}` : ''}\n`);
  };
}

// ---- stats ----

function formatStats(s: BufferStats, verify?: VerifyResult): string {
  const lines: string[] = [];
  const row = (label: string, value: string) => lines.push(`${label.padEnd(10)}  ${value}`);
  row('data dir', `${s.dataDir}${s.readOnly ? ' (read-only)' : ''}`);
  row('segments', `${s.segments} (${formatBytes(s.bytes)})`);
  row('events', String(s.events));
  if (s.oldestTs !== null && s.newestTs !== null) {
    row('oldest', formatTs(s.oldestTs));
    row('newest', `${formatTs(s.newestTs)} (span ${formatSpan(s.newestTs - s.oldestTs)})`);
  }
  row('per type', EVENT_TYPES.map((t) => `${t} ${s.eventsPerType[t]}`).join(', '));
  if (s.corruptBlocks > 0) row('damaged', `${s.corruptBlocks} damaged block(s) skipped`);
  if (verify) row('verified', `${verify.blocks} blocks read, ${verify.events} events, ${verify.damagedBlocks} damaged`);
  row('frozen', `${s.frozen.windows.length} window(s), ${formatBytes(s.frozen.bytes)}`);
  for (const w of s.frozen.windows) {
    lines.push(`  ${w.id}  ${formatTs(w.from)} .. ${formatTs(w.to)}  ${w.count} events  ${w.reason}`);
  }
  return `${lines.map(clean).join('\n')}\n`;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

function formatSpan(ns: number): string {
  let s = Math.round(ns / 1e9);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  return [d && `${d}d`, h && `${h}h`, m && `${m}m`, `${s}s`].filter(Boolean).join('');
}
