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

export function formatEvent(e: AmberEvent, format: OutputFormat): string {
  return format === 'json' ? JSON.stringify(e) : formatColumns(e);
}

export const COLUMNS_HEADER = `${'TIME(UTC)'.padEnd(12)}  ${'CONTAINER'.padEnd(12)}  ${'PID'.padStart(7)}  ${'COMM'.padEnd(16)}  ${'TYPE'.padEnd(7)}  DETAILS`;

/** One event as a table row: time HH:MM:SS.mmm (UTC), container (12 chars or "host"), pid, comm, type, the type's key fields. */
export function formatColumns(ev: AmberEvent): string {
  const time = Number.isFinite(ev.ts) ? formatTs(ev.ts).slice(11, 23) : '?';
  const container = ev.containerId ? clean(String(ev.containerId).slice(0, 12)) : 'host';
  let text: string;
  try {
    text = details(ev);
  } catch {
    text = clean(JSON.stringify(ev)); // not a contract shape: show it whole
  }
  return `${time.padEnd(12)}  ${container.padEnd(12)}  ${String(ev.pid).padStart(7)}  ${clean(String(ev.comm)).padEnd(16)}  ${String(ev.type).padEnd(7)}  ${text}`;
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
  return arg === '' || /[\s"'\\]/.test(arg) || /[\x00-\x1f\x7f-\x9f]/.test(arg) ? JSON.stringify(arg) : arg;
}

/** Paths, names and args come from the watched workloads: never let them drive the terminal. */
export function clean(text: string): string {
  return text.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
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

