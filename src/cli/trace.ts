/**
 * amber trace <type|all> --local: load the sensor in this process and stream
 * its events, like Inspektor Gadget's trace gadgets.
 */
import { parseArgs } from 'node:util';
import { EVENT_TYPES } from '../sensor/events';
import { countTotal, Sensor, type SensorStats } from '../sensor/sensor';
import { compileFilter } from '../filter';
import { nowNs, parseDurationMs } from '../time';
import { FILTER_OPTIONS, FILTER_USAGE, filterFromOptions } from './filter-options';
import { COLUMNS_HEADER, formatEvent, parseOutputFormat } from './format';
import { remoteTrace, SERVER_OPTIONS, SERVER_USAGE, serversFromOptions } from './remote';
import { parseEventTypes, UsageError } from './usage';

export const TRACE_USAGE = `usage: amber trace <${EVENT_TYPES.join('|')}|all> [--server ADDR]... | --local [options]
${SERVER_USAGE}
  --local                     load the sensor in this process instead (a node without an agent)
  -o, --output json|columns   output format (default columns)
${FILTER_USAGE}
  --timeout DURATION          stop after this long (e.g. 10s)
  --dns-timeout DURATION      a DNS query unanswered this long is reported as TIMEOUT (default 5s)
Drop counters are printed to stderr when it stops (timeout, Ctrl-C, SIGTERM).`;

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
      ...SERVER_OPTIONS,
      output: { type: 'string', short: 'o' },
      ...FILTER_OPTIONS,
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
  const format = parseOutputFormat(values.output);
  const filter = filterFromOptions(values, nowNs());
  const timeoutMs = values.timeout !== undefined ? parseDurationMs(values.timeout) : undefined;
  if (!values.local) {
    if (values['dns-timeout'] !== undefined) throw new UsageError('--dns-timeout is the agent\'s setting (sensor.dnsTimeout); it applies to --local only');
    if (positionals[0] !== 'all') filter.types = types;
    return remoteTrace({ ...serversFromOptions(values), filter, format, timeoutMs }, out, err);
  }
  if (values.server) throw new UsageError('--local and --server exclude each other');
  const matches = compileFilter(filter);
  const dnsTimeoutMs = values['dns-timeout'] !== undefined ? parseDurationMs(values['dns-timeout']) : undefined;

  if (format === 'columns') out.write(`${COLUMNS_HEADER}\n`);
  const sensor = await Sensor.start({ types, ignoreTgid: process.pid, dnsTimeoutMs }, (events) => {
    let text = '';
    for (const e of events) if (matches(e)) text += `${formatEvent(e, format)}\n`;
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
