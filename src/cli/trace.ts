/**
 * amber trace <type|all> --local: load the sensor in this process and stream
 * its events, like Inspektor Gadget's trace gadgets.
 */
import { parseArgs } from 'node:util';
import { EVENT_TYPES, type AmberEvent } from '../sensor/events';
import { countTotal, Sensor, type SensorStats } from '../sensor/sensor';
import { parseDurationMs } from '../time';
import { COLUMNS_HEADER, formatEvent, parseOutputFormat } from './format';
import { parseEventTypes, UsageError } from './usage';

export const TRACE_USAGE = `usage: amber trace <${EVENT_TYPES.join('|')}|all> --local [options]
  -o, --output json|columns   output format (default columns)
  --container ID              only this container (ID prefix)
  --pid N                     only this process
  --comm NAME                 only this command name
  --host                      only host processes
  --containers-only           only container processes
  --timeout DURATION          stop after this long (e.g. 10s)
  --dns-timeout DURATION      a DNS query unanswered this long is reported as TIMEOUT (default 5s)
Drop counters are printed to stderr when it stops (timeout, Ctrl-C, SIGTERM).`;

export interface EventFilter {
  container?: string;
  pid?: number;
  comm?: string;
  host?: boolean;
  containersOnly?: boolean;
}

export function matchesFilter(e: AmberEvent, f: EventFilter): boolean {
  if (f.container !== undefined && !e.containerId.startsWith(f.container)) return false;
  if (f.pid !== undefined && e.pid !== f.pid) return false;
  if (f.comm !== undefined && e.comm !== f.comm) return false;
  if (f.host && e.containerId !== '') return false;
  if (f.containersOnly && e.containerId === '') return false;
  return true;
}

export function formatStats(stats: SensorStats): string {
  const received = countTotal(stats.received);
  const drops = Object.entries(stats.drops)
    .map(([t, n]) => `${t}=${n}`)
    .join(' ');
  return `amber: ${received} events; drops: ${drops}`;
}

export async function traceCommand(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      local: { type: 'boolean' },
      output: { type: 'string', short: 'o' },
      container: { type: 'string' },
      pid: { type: 'string' },
      comm: { type: 'string' },
      host: { type: 'boolean' },
      'containers-only': { type: 'boolean' },
      timeout: { type: 'string' },
      'dns-timeout': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    out.write(`${TRACE_USAGE}\n`);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError(TRACE_USAGE);
  const types = parseEventTypes(positionals[0], 'trace', true);
  if (!values.local) {
    throw new UsageError('tracing through a running agent is not available yet: add --local to trace in this process');
  }
  if (values.host && values['containers-only']) throw new UsageError('--host and --containers-only exclude each other');
  const format = parseOutputFormat(values.output);
  const pid = values.pid !== undefined ? Number(values.pid) : undefined;
  if (pid !== undefined && !Number.isInteger(pid)) throw new UsageError(`--pid takes a number, not "${values.pid}"`);
  const filter: EventFilter = {
    container: values.container,
    pid,
    comm: values.comm,
    host: values.host,
    containersOnly: values['containers-only'],
  };
  const timeoutMs = values.timeout !== undefined ? parseDurationMs(values.timeout) : undefined;
  const dnsTimeoutMs = values['dns-timeout'] !== undefined ? parseDurationMs(values['dns-timeout']) : undefined;

  if (format === 'columns') out.write(`${COLUMNS_HEADER}\n`);
  const sensor = await Sensor.start({ types, ignoreSelf: true, dnsTimeoutMs }, (events) => {
    let text = '';
    for (const e of events) if (matchesFilter(e, filter)) text += `${formatEvent(e, format)}\n`;
    if (text) out.write(text);
  });
  err.write(`amber: tracing ${types.join(',')} (${timeoutMs !== undefined ? `for ${timeoutMs / 1000}s` : 'Ctrl-C to stop'})\n`);

  await new Promise<void>((resolve) => {
    const done = () => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      clearTimeout(timer);
      resolve();
    };
    const timer = timeoutMs !== undefined ? setTimeout(done, timeoutMs) : undefined;
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
  const stats = await sensor.stop();
  err.write(`${formatStats(stats)}\n`);
  return 0;
}
