/** amber status: what each agent is doing (sensor, counters, subscribers, buffer) and the key its incident bundles are signed with. */
import { parseArgs } from 'node:util';
import { describeError } from '../api/client';
import type { StatusResponse } from '../api/gen/amber';
import { formatTs } from '../time';
import { clean } from './format';
import { connectNodes, SERVER_OPTIONS, SERVER_USAGE, serversFromOptions } from './remote';
import { UsageError } from './usage';

export const STATUS_USAGE = `usage: amber status [--server ADDR]... [-o text|json]
${SERVER_USAGE}
  -o, --output text|json      a summary (default) or one JSON object per agent`;

export async function statusCommand(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { ...SERVER_OPTIONS, output: { type: 'string', short: 'o', default: 'text' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    out.write(`${STATUS_USAGE}\n`);
    return 0;
  }
  if (values.output !== 'text' && values.output !== 'json') throw new UsageError(`-o must be text or json, got "${values.output}"`);
  const { servers, auth, k8s } = serversFromOptions(values);
  const nodes = await connectNodes(servers, auth, err, k8s);
  let code = nodes.length === nodes.requested ? 0 : 1;
  for (const { client } of nodes) {
    try {
      // a fresh answer: the one connectNodes got only named the node
      const s = await client.status();
      out.write(values.output === 'json' ? `${JSON.stringify(s)}\n` : formatStatus(s));
    } catch (e) {
      err.write(`amber: ${client.address.text}: ${describeError(e)}\n`);
      code = 1;
    } finally {
      client.close();
    }
  }
  return code;
}

export function formatStatus(s: StatusResponse): string {
  const lines: string[] = [];
  const row = (label: string, value: string) => lines.push(`${label.padEnd(12)}  ${value}`);
  row('node', clean(s.node));
  row('version', s.version);
  row('uptime', `${s.uptimeSeconds.toFixed(0)}s`);
  if (s.sensor) {
    row('sensor', `${s.sensor.state}; programs: ${s.sensor.programs.join(', ')}`);
    row('stalls', `${s.sensor.stalls}; unknown records: ${s.sensor.unknownKinds}; DNS queries pending: ${s.sensor.dnsPending}`);
  }
  lines.push(`${'TYPE'.padEnd(8)}  ${'EVENTS'.padStart(12)}  ${'DROPS'.padStart(10)}`);
  for (const t of s.types) lines.push(`${t.type.padEnd(8)}  ${String(t.events).padStart(12)}  ${String(t.drops).padStart(10)}`);
  lines.push(`${'SUBSCRIBER'.padEnd(20)}  ${'DELIVERED'.padStart(12)}  ${'DROPPED'.padStart(10)}  ${'QUEUED'.padStart(8)}`);
  for (const x of s.subscribers) {
    lines.push(`${clean(x.name).padEnd(20)}  ${String(x.delivered).padStart(12)}  ${String(x.dropped).padStart(10)}  ${String(x.queued).padStart(8)}`);
  }
  row('api streams', String(s.activeStreams));
  const b = s.buffer;
  if (b) {
    row('buffer', `${clean(b.dataDir)}: ${b.segments} segments, ${b.bytes} bytes, ${b.events} events (${b.memoryEvents} in memory)`);
    if (b.oldestTs !== undefined) row('oldest', formatTs(b.oldestTs));
    if (b.newestTs !== undefined) row('newest', formatTs(b.newestTs));
    row('frozen', `${b.frozenWindows} window(s), ${b.frozenBytes} bytes`);
    if (b.droppedEvents || b.corruptBlocks || b.writeError) {
      row('damage', `${b.droppedEvents} events dropped (disk), ${b.corruptBlocks} damaged blocks${b.writeError ? `; writes failing: ${b.writeError}` : ''}`);
    }
  }
  if (s.signingPublicKey) {
    // unindented, so the lines can be saved as the file `amber verify --key` takes
    row('signing key', 'incident bundles are signed with this key (PEM):');
    lines.push(...s.signingPublicKey.trimEnd().split('\n').map(clean));
  }
  return `${lines.join('\n')}\n\n`;
}
