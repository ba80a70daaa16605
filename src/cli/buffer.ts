/**
 * `amber buffer query` and `amber buffer stats`: read a data dir offline (no
 * agent needed, a copied data dir works), never writing to it.
 */
import { parseArgs } from 'node:util';
import { DEFAULT_DATA_DIR, EventBuffer } from '../buffer';
import { formatTs, nowNs } from '../time';
import type { BufferStats } from '../buffer';
import { EVENT_TYPES } from '../sensor/events';
import { FILTER_OPTIONS, FILTER_USAGE, filterFromOptions, integerOption, TIME_OPTIONS, TIME_USAGE } from './filter-options';
import { clean, COLUMNS_HEADER, formatColumns } from './format';
import { remoteQuery, SERVER_OPTIONS, SERVER_USAGE, serversFromOptions } from './remote';
import { UsageError } from './usage';

const QUERY_USAGE = `usage: amber buffer query [--server ADDR]... | --data-dir DIR [filter options] [-o columns|json] [--limit N]
${SERVER_USAGE}
  --data-dir DIR              read a data dir (${DEFAULT_DATA_DIR}, or a copy of one) offline, without an agent
  --type exec,open,...        event types (${EVENT_TYPES.join(', ')})
${TIME_USAGE}
${FILTER_USAGE}
  -o, --output columns|json   a table (default) or JSON lines
  --limit N                   the first N events
`;

const STATS_USAGE = `usage: amber buffer stats [--data-dir DIR] [-o text|json]
  data dir default: ${DEFAULT_DATA_DIR}
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
        limit: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      out.write(QUERY_USAGE);
      return 0;
    }
    const output = values.output;
    if (output !== 'columns' && output !== 'json') throw new UsageError(`-o must be columns or json, got "${output}"`);
    const filter = filterFromOptions(values, nowNs());
    const limit = values.limit === undefined ? Infinity : integerOption('--limit', values.limit, 1);
    if (values['data-dir'] === undefined) return remoteQuery({ ...serversFromOptions(values), filter, format: output, limit }, out, err);
    if (values.server) throw new UsageError('--data-dir and --server exclude each other');

    const buffer = await EventBuffer.openReadOnly(values['data-dir'], { log: warnTo(err) });
    const lines = new LineWriter(out);
    if (output === 'columns') await lines.add([COLUMNS_HEADER]);
    let left = limit;
    try {
      for await (const batch of buffer.queryBatches(filter)) {
        const events = batch.length > left ? batch.slice(0, left) : batch;
        left -= events.length;
        const stop = await lines.add(events.map(output === 'json' ? (ev) => JSON.stringify(ev) : formatColumns));
        if (stop || left === 0) break;
      }
      await lines.end();
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
        'data-dir': { type: 'string', default: DEFAULT_DATA_DIR },
        output: { type: 'string', short: 'o', default: 'text' },
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
      const stats = buffer.stats();
      out.write(values.output === 'json' ? `${JSON.stringify(stats)}\n` : formatStats(stats));
    } finally {
      await buffer.close();
    }
    return 0;
  });
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
      err.write(`amber buffer ${command}: ${error.message}\n${usage}`);
      return 2;
    }
    err.write(`amber buffer ${command}: ${error.message}\n`);
    return 1;
  }
}

/** Damage found while reading goes to stderr; routine notes (a live writer's unfinished tail) do not. */
function warnTo(err: NodeJS.WritableStream) {
  return (level: string, msg: string, fields?: Record<string, unknown>) => {
    if (level === 'info') return;
    err.write(`amber buffer: ${level}: ${msg}${fields ? ` ${JSON.stringify(fields)}` : ''}\n`);
  };
}

/** Batches lines; honours backpressure; stops quietly when the reader goes away (e.g. `| head`). */
class LineWriter {
  private chunk = '';
  private closed = false;

  constructor(private readonly out: NodeJS.WritableStream) {
    out.once('error', () => {
      this.closed = true;
    });
  }

  /** Resolves true when the output is gone and the caller should stop. */
  async add(lines: string[]): Promise<boolean> {
    for (const line of lines) this.chunk += `${line}\n`;
    if (this.chunk.length >= 64 * 1024) await this.flush();
    return this.closed;
  }

  async end(): Promise<void> {
    await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.closed || this.chunk === '') return;
    const text = this.chunk;
    this.chunk = '';
    if (!this.out.write(text)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.out.off('drain', done);
          this.out.off('error', done);
          this.out.off('close', done);
          resolve();
        };
        this.out.once('drain', done);
        this.out.once('error', done);
        this.out.once('close', done);
      });
    }
  }
}

// ---- stats ----

function formatStats(s: BufferStats): string {
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
  row('frozen', `${s.frozen.windows.length} window(s), ${formatBytes(s.frozen.bytes)}`);
  for (const w of s.frozen.windows) {
    lines.push(`  ${w.id}  ${formatTs(w.from)} .. ${formatTs(w.to)}  ${w.count} events  ${clean(w.reason)}`);
  }
  return `${lines.join('\n')}\n`;
}

function formatBytes(n: number): string {
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
