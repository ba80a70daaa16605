/**
 * How events are shown: JSON lines (the public field names) or a table, for
 * `amber trace` and `amber buffer query` alike.
 */
import { constants as osConstants } from 'node:os';
import type { AmberEvent, DnsAnswer } from '../sensor/events';
import { formatTs } from '../time';
import { UsageError } from './usage';

export type OutputFormat = 'json' | 'columns';

export function parseOutputFormat(text: string | undefined): OutputFormat {
  const f = text ?? 'columns';
  if (f !== 'json' && f !== 'columns') throw new UsageError(`-o must be columns or json, got "${f}"`);
  return f;
}

/**
 * One event as one line of the format (no newline): JSON.stringify, or a table row.
 * (A serializer per event shape was measured: 1.3-1.6x faster at building the
 * strings, but 1.1-1.4x slower end to end into a file, because its strings are
 * ropes of many pieces that cost more to encode than V8's flat JSON output.)
 */
export function eventFormatter(format: OutputFormat, columns: readonly ColumnName[] = DEFAULT_COLUMNS): (e: AmberEvent, node?: string) => string {
  if (format === 'json') return (e) => JSON.stringify(e);
  const layout = columnsLayout(columns);
  return (e, node) => layout.row(e, node);
}

/** The fields an event shows of its container once joined (withMetadata); absent when unknown. */
type Joined = AmberEvent & { container?: unknown; pod?: unknown; namespace?: unknown };

interface Column {
  header: string;
  width: number;
  right?: boolean;
  cell(ev: Joined, node: string): string;
}

const str = (v: unknown) => (typeof v === 'string' ? v : '');

/**
 * The table's columns, IG-like. Every cell may come from a watched workload or a
 * planted buffer block (a `type` or `pid` that is a string full of escapes
 * included): each cell and the whole row are cleaned.
 */
const COLUMNS: Record<string, Column> = {
  node: { header: 'NODE', width: 12, cell: (_, node) => node },
  time: { header: 'TIME(UTC)', width: 12, cell: (ev) => (Number.isFinite(ev.ts) ? formatTs(ev.ts).slice(11, 23) : '?') },
  namespace: { header: 'NAMESPACE', width: 12, cell: (ev) => str(ev.namespace) },
  pod: { header: 'POD', width: 20, cell: (ev) => str(ev.pod) },
  // the container's name when known, else its ID's first 12 characters; "host" for host processes
  container: { header: 'CONTAINER', width: 16, cell: (ev) => (!ev.containerId ? 'host' : str(ev.container) || String(ev.containerId).slice(0, 12)) },
  pid: { header: 'PID', width: 7, right: true, cell: (ev) => String(ev.pid) },
  comm: { header: 'COMM', width: 16, cell: (ev) => String(ev.comm) },
  type: { header: 'TYPE', width: 7, cell: (ev) => String(ev.type) },
  details: {
    header: 'DETAILS',
    width: 0,
    cell: (ev) => {
      try {
        return details(ev);
      } catch {
        return JSON.stringify(ev); // not a contract shape: show it whole
      }
    },
  },
};

export type ColumnName = keyof typeof COLUMNS;
export const COLUMN_NAMES = Object.keys(COLUMNS) as ColumnName[];
/** IG's layout; NODE goes first when several agents are merged. */
export const DEFAULT_COLUMNS: readonly ColumnName[] = ['namespace', 'pod', 'container', 'pid', 'comm', 'type', 'details'];

/** `--columns a,b,c`: the columns in that order; a usage error lists the valid names. */
export function parseColumns(text: string | undefined, defaults: readonly ColumnName[] = DEFAULT_COLUMNS): readonly ColumnName[] {
  if (text === undefined) return defaults;
  const names = text.split(',').map((n) => n.trim().toLowerCase());
  for (const n of names) {
    if (!COLUMN_NAMES.includes(n)) throw new UsageError(`--columns: unknown column "${n}" (valid: ${COLUMN_NAMES.join(', ')})`);
  }
  if (new Set(names).size !== names.length) throw new UsageError('--columns names a column twice');
  return names;
}

/** The header line and the row of each event, columns aligned to fixed widths (a stream cannot measure them first). */
export function columnsLayout(names: readonly ColumnName[], widths: Partial<Record<ColumnName, number>> = {}): { header: string; row(ev: AmberEvent, node?: string): string } {
  const cols = names.map((n) => ({ ...COLUMNS[n], width: widths[n] ?? COLUMNS[n].width }));
  const last = cols.length - 1;
  const pad = (text: string, c: Column, i: number) => (i === last && !c.right ? text : c.right ? text.padStart(c.width) : text.padEnd(c.width));
  return {
    header: cols.map((c, i) => pad(c.header, c, i)).join('  ').trimEnd(),
    row: (ev, node = '') => clean(cols.map((c, i) => pad(clean(c.cell(ev as Joined, node)), c, i)).join('  ')),
  };
}

/** One event as a table row of the default columns. */
export function formatColumns(ev: AmberEvent): string {
  defaultLayout ??= columnsLayout(DEFAULT_COLUMNS);
  return defaultLayout.row(ev);
}
let defaultLayout: ReturnType<typeof columnsLayout> | undefined;

/** An address alone (the common answer), any other type with its name. */
function answerText(a: DnsAnswer): string {
  return a.type === 'A' || a.type === 'AAAA' || a.type === '' ? clean(a.data) : `${clean(a.type)} ${clean(a.data)}`;
}

function details(ev: AmberEvent): string {
  switch (ev.type) {
    case 'exec': {
      const marks = [
        ev.script && `[script ${clean(ev.script)}]`,
        ev.upperLayer && '[upper-layer]',
        ev.fileless && '[fileless]',
        ev.argsTruncated && '[args truncated]',
        ev.pathTruncated && '[path truncated]',
      ].filter(Boolean);
      const exe = ev.exePath || ev.filename;
      const as = ev.filename && ev.filename !== exe ? ` (as ${clean(ev.filename)})` : '';
      return [`${clean(exe)}${as}`, ev.args.map(quoteArg).join(' '), ...marks].filter(Boolean).join('  ');
    }
    case 'exit':
      return ev.signal ? `signal ${ev.signal}${name(SIGNALS, ev.signal)}` : `code ${ev.exitCode}`;
    case 'fork':
      return `child ${ev.childPid}`;
    case 'open':
      return `${clean(ev.path)}${ev.pathTruncated ? ' [path truncated]' : ''}  ${ev.flagNames.join('|')}  ${ev.ret >= 0 ? `fd ${ev.ret}` : `${ev.ret}${name(ERRNOS, -ev.ret)}`}`;
    case 'connect':
    case 'accept': {
      const result = ev.ret < 0 ? `  ${ev.ret}${name(ERRNOS, -ev.ret)}` : '';
      return `${ev.proto} ${hostPort(ev.saddr, ev.sport)} -> ${hostPort(ev.daddr, ev.dport)}${result}`;
    }
    case 'dns': {
      if (ev.qr === 'Q') return `Q ${clean(ev.qtype)} ${clean(ev.name)}`;
      const latency = ev.latencyNs !== undefined ? `  (${(ev.latencyNs / 1e6).toFixed(1)} ms)` : '';
      return `R ${clean(ev.qtype)} ${clean(ev.name)} ${clean(ev.rcode)}${ev.answers.length ? ` ${ev.answers.map(answerText).join(',')}` : ''}${ev.answersTruncated ? ' [answers truncated]' : ''}${latency}`;
    }
    case 'drift': {
      const hash = ev.sha256 ? `sha256 ${ev.sha256.slice(0, 16)}…` : ev.hashError ? `[${clean(ev.hashError)}]` : '';
      return [`${ev.action} ${ev.reason} ${ev.subject} ${clean(ev.path)} (${ev.change})`, hash, `rules ${ev.rules.map(clean).join(',')}`]
        .filter(Boolean)
        .join('  ');
    }
    case 'alert':
      return `${ev.action} rules ${ev.rules.map(clean).join(',')}: ${ev.event ? `${clean(String(ev.event.type))} ${details(ev.event)}` : ''}`;
    default:
      return '';
  }
}

function hostPort(addr: string, port: number): string {
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

/** Arguments quoted when they would read ambiguously. */
export function quoteArg(arg: string): string {
  return arg === '' || /[\s"'\\]/.test(arg) || UNSAFE.test(arg) ? JSON.stringify(arg) : arg;
}

/**
 * What must never reach a terminal raw: C0 controls, DEL, C1 controls (U+009B
 * is a one-character CSI), the bidi controls that reorder what is shown
 * (U+202E makes "rlo\u202egpj.exe" read "rloexe.jpg") and the line separators.
 */
const UNSAFE = /[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
const UNSAFE_ALL = new RegExp(UNSAFE.source, 'g');

/**
 * Paths, names and args come from the watched workloads, stored fields from a
 * data dir: never let them drive the terminal. C0, DEL and C1 become \xNN,
 * the others \uNNNN (the README's escape form).
 */
export function clean(text: string): string {
  if (!UNSAFE.test(text)) return text;
  return text.replace(UNSAFE_ALL, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

const SIGNALS = invert(osConstants.signals as unknown as Record<string, number>);
const ERRNOS = invert(osConstants.errno as unknown as Record<string, number>);

function invert(table: Record<string, number>): Map<number, string> {
  const map = new Map<number, string>();
  for (const [key, value] of Object.entries(table)) if (!map.has(value)) map.set(value, key);
  return map;
}

function name(table: Map<number, string>, n: number): string {
  const found = table.get(n);
  return found ? ` (${found})` : '';
}

