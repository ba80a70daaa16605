/**
 * amber trace <type|all>: stream events like Inspektor Gadget's trace gadgets,
 * from running agents (--server, remote.ts) or, with --local, from a sensor
 * loaded in this process. Locally it is the agent's code path: the sensor
 * publishes into a Pipeline and the output takes the command's filter there.
 */
import { parseArgs } from 'node:util';
import { ContainerMetadataStore } from '../containers/metadata';
import { fieldsLookup, withMetadata } from '../containers/metadata-dir';
import { DEFAULTS, RANGES } from '../defaults';
import { compileFilter, type EventFilter } from '../filter';
import { Pipeline } from '../pipeline/pipeline';
import { startDetector } from '../detect/detector';
import { defaultRulesFile, loadRules } from '../detect/rules';
import { EVENT_TYPES, FINDING_TYPES, SENSOR_EVENT_TYPES, type SensorEventType } from '../sensor/events';
import { preflight } from '../sensor/preflight';
import { countTotal, Sensor, type SensorStats } from '../sensor/sensor';
import { nowNs } from '../time';
import { durationOption, FILTER_OPTIONS, FILTER_USAGE, filterFromOptions } from './filter-options';
import { COLUMN_NAMES, columnsLayout, DEFAULT_COLUMNS, eventFormatter, parseColumns, parseOutputFormat } from './format';
import { note, OutputWriter } from './output';
import { remoteTrace, SERVER_OPTIONS, SERVER_USAGE, serversFromOptions } from './remote';
import { parseEventTypes, UsageError } from './usage';

export const TRACE_USAGE = `usage: amber trace <${EVENT_TYPES.join('|')}|all> [--server ADDR]... | --local [options]
${SERVER_USAGE}
  --local                     load the sensor in this process instead (a node without an agent)
  -o, --output json|columns   output format (default columns)
  --columns A,B,...           the table's columns, in order (${COLUMN_NAMES.join(', ')};
                              default namespace,pod,container,pid,comm,type,details; node first
                              when several agents are merged)
${FILTER_USAGE}
  --timeout DURATION          stop after this long (e.g. 10s; ${RANGES.traceTimeout.text})
  --dns-timeout DURATION      a DNS query unanswered this long is reported as TIMEOUT
                              (default ${DEFAULTS.sensor.dnsTimeoutMs / 1000}s; ${RANGES.sensor.dnsTimeout.text})
  --rules FILE                drift and alert findings (--local): the rule file (default the
                              shipped rules/default.yaml); the sensor then records every type
It stops on --timeout, Ctrl-C, SIGTERM or when the reader of its output goes away
(e.g. | head); then it prints its counters to stderr: events received, events written
(those the filter kept) and events the kernel's ring dropped, per type.`;

export const TRACE_OPTIONS = {
  local: { type: 'boolean' },
  ...SERVER_OPTIONS,
  output: { type: 'string', short: 'o' },
  columns: { type: 'string' },
  ...FILTER_OPTIONS,
  timeout: { type: 'string' },
  'dns-timeout': { type: 'string' },
  rules: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

export function formatStats(stats: SensorStats, written: number): string {
  const drops = Object.entries(stats.drops)
    .map(([t, n]) => `${t}=${n}`)
    .join(' ');
  return `amber: ${countTotal(stats.received)} events, ${written} written; drops: ${drops}`;
}

export async function traceCommand(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: TRACE_OPTIONS });
  if (values.help) {
    out.write(`${TRACE_USAGE}\n`);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError(TRACE_USAGE);
  const types = parseEventTypes(positionals[0], 'trace', true);
  const format = parseOutputFormat(values.output);
  if (values.columns !== undefined && format !== 'columns') throw new UsageError('--columns applies to -o columns');
  const columns = values.columns === undefined ? undefined : parseColumns(values.columns);
  const filter: EventFilter = { ...filterFromOptions(values, nowNs()), types };
  const timeoutMs = values.timeout !== undefined ? durationOption('--timeout', values.timeout, RANGES.traceTimeout) : undefined;
  if (!values.local) {
    if (values['dns-timeout'] !== undefined) throw new UsageError("--dns-timeout is the agent's setting (sensor.dnsTimeout); it applies to --local only");
    if (values.rules !== undefined) throw new UsageError("--rules is the agent's setting (detect.rules); it applies to --local only");
    return remoteTrace({ ...serversFromOptions(values), filter, format, columns, timeoutMs }, out, err);
  }
  if (values.server) throw new UsageError('--local and --server exclude each other');
  // findings need the detector, and the detector its process table and rules: the sensor records every type
  const findings = types.some((t) => (FINDING_TYPES as readonly string[]).includes(t));
  if (values.rules !== undefined && !findings) throw new UsageError('--rules applies to drift and alert findings');
  const rules = findings ? loadRules(values.rules ?? defaultRulesFile()) : undefined;
  const sensorTypes = findings ? [...SENSOR_EVENT_TYPES] : (types as SensorEventType[]);
  const dnsTimeoutMs =
    values['dns-timeout'] !== undefined ? durationOption('--dns-timeout', values['dns-timeout'], RANGES.sensor.dnsTimeout) : undefined;

  const output = new OutputWriter(out);
  const show = eventFormatter(format, columns);
  if (format === 'columns') output.write(`${columnsLayout(columns ?? DEFAULT_COLUMNS).header}\n`);
  const pipeline = new Pipeline((obj, msg) => note(err, `amber: ${msg} ${JSON.stringify(obj)}\n`));
  // The output is this process's recorder, as the buffer is the agent's: a sink, so a slow output
  // applies the sensor's backpressure (and the kernel counts what the ring drops) instead of
  // losing events in a subscriber queue. Measured under the open storm, a queued subscriber lost
  // about half of the storm's events while a sink lost none.
  // this process learns the containers as the agent does (no files: nothing is written locally)
  const { cgroupRoot } = preflight({ needCgroupSkb: sensorTypes.includes('dns') });
  const containers = new ContainerMetadataStore({ cgroupRoot, log: (obj, msg) => note(err, `amber: ${msg} ${JSON.stringify(obj)}\n`) });
  const known = (id: string) => containers.get(id);
  const matches = compileFilter(filter, fieldsLookup(known));
  let written = 0;
  pipeline.addSink((events) => {
    if (output.closed) return;
    let text = '';
    let n = 0;
    for (const e of events) {
      if (!matches(e)) continue;
      text += `${show(withMetadata(e, known))}\n`;
      n++;
    }
    written += n;
    output.write(text);
    void output.flush(); // one write per batch; stdout to a file, pipe or terminal writes synchronously on Linux
  });
  const detector = rules ? startDetector({ pipeline, metadata: containers, rules, log: (obj, msg) => note(err, `amber: ${msg} ${JSON.stringify(obj)}\n`) }) : undefined;
  let sensor: Sensor;
  try {
    sensor = await Sensor.start({ types: sensorTypes, ignoreSelf: true, dnsTimeoutMs, cgroupRoot, containers }, pipeline.publish);
  } catch (e) {
    detector?.close();
    containers.close();
    throw e;
  }
  // the containers running now are named before the first line: learned at start, in the background
  await containers.idle();
  note(err, `amber: tracing ${types.join(',')} (${timeoutMs !== undefined ? `for ${timeoutMs / 1000}s` : 'Ctrl-C to stop'})\n`);

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
    output.onClosed(done);
  });
  const stats = await sensor.stop();
  await detector?.settled();
  detector?.close();
  await output.flush();
  pipeline.close();
  containers.close();
  note(err, `${formatStats(stats, written)}\n`);
  return 0;
}
