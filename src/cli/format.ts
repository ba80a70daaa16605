/** How events are shown: JSON lines (the public field names) or a readable table. */
import type { AmberEvent } from '../sensor/events';

export type OutputFormat = 'json' | 'columns';

export function parseOutputFormat(text: string | undefined): OutputFormat {
  const f = text ?? 'columns';
  if (f !== 'json' && f !== 'columns') throw new Error(`unknown output format "${f}" (json or columns)`);
  return f;
}

export function toJsonLine(e: AmberEvent): string {
  return JSON.stringify(e);
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

function hostPort(addr: string, port: number): string {
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

/** Local time of day, HH:MM:SS.mmm. */
export function clockTime(tsNs: number): string {
  const d = new Date(Math.floor(tsNs / 1e6));
  const two = (n: number) => String(n).padStart(2, '0');
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

/** The type's key fields, in one line. */
export function details(e: AmberEvent): string {
  switch (e.type) {
    case 'exec': {
      const marks = [e.upperLayer ? '[upper-layer]' : '', e.fileless ? '[fileless]' : '', e.argsTruncated ? '[args-truncated]' : '']
        .filter(Boolean)
        .join(' ');
      return [e.exePath, ...e.args.slice(1)].join(' ') + (marks ? ` ${marks}` : '');
    }
    case 'exit':
      return e.signal ? `signal=${e.signal}` : `code=${e.exitCode}`;
    case 'fork':
      return `child=${e.childPid}`;
    case 'open':
      return `${e.path} ${e.flagNames.join('|')} ret=${e.ret}`;
    case 'connect':
    case 'accept':
      return `${e.proto} ${hostPort(e.saddr, e.sport)} -> ${hostPort(e.daddr, e.dport)} ret=${e.ret}`;
    case 'dns': {
      const head = `${e.qr} ${e.qtype} ${e.name} id=${e.id}`;
      if (e.qr === 'Q') return head;
      const latency = e.latencyNs !== undefined ? ` ${(e.latencyNs / 1e6).toFixed(3)}ms` : '';
      return `${head} ${e.rcode}${e.answers.length ? ` [${e.answers.join(', ')}]` : ''}${latency}`;
    }
  }
}

export const COLUMNS_HEADER = `${pad('TIME', 13)}${pad('CONTAINER', 14)}${pad('PID', 8)}${pad('COMM', 17)}${pad('TYPE', 8)}DETAILS`;

export function toColumnsLine(e: AmberEvent): string {
  const container = e.containerId ? e.containerId.slice(0, 12) : 'host';
  return `${pad(clockTime(e.ts), 13)}${pad(container, 14)}${pad(String(e.pid), 8)}${pad(e.comm, 17)}${pad(e.type, 8)}${details(e)}`;
}

export function formatEvent(e: AmberEvent, format: OutputFormat): string {
  return format === 'json' ? toJsonLine(e) : toColumnsLine(e);
}
