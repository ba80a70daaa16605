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
export function eventFormatter(format: OutputFormat): (e: AmberEvent) => string {
  return format === 'json' ? (e) => JSON.stringify(e) : formatColumns;
}

export const COLUMNS_HEADER = `${'TIME(UTC)'.padEnd(12)}  ${'CONTAINER'.padEnd(12)}  ${'PID'.padStart(7)}  ${'COMM'.padEnd(16)}  ${'TYPE'.padEnd(7)}  DETAILS`;

/**
 * One event as a table row: time HH:MM:SS.mmm (UTC), container (12 chars or
 * "host"), pid, comm, type, the type's key fields. The whole row is cleaned:
 * every field may come from a watched workload or a planted buffer block
 * (a `type` or `pid` that is a string full of escapes included).
 */
export function formatColumns(ev: AmberEvent): string {
  const time = Number.isFinite(ev.ts) ? formatTs(ev.ts).slice(11, 23) : '?';
  const container = ev.containerId ? clean(String(ev.containerId).slice(0, 12)) : 'host';
  let text: string;
  try {
    text = details(ev);
  } catch {
    text = JSON.stringify(ev); // not a contract shape: show it whole
  }
  return clean(
    `${time.padEnd(12)}  ${container.padEnd(12)}  ${clean(String(ev.pid)).padStart(7)}  ${clean(String(ev.comm)).padEnd(16)}  ${clean(String(ev.type)).padEnd(7)}  ${text}`,
  );
}

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
    default:
      return '';
  }
}

function hostPort(addr: string, port: number): string {
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

/** Arguments quoted when they would read ambiguously. */
function quoteArg(arg: string): string {
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

