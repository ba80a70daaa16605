/**
 * `amber trace` and `amber buffer query` as clients of running agents
 * (--server, repeatable; default the local socket). Several servers: their
 * streams are merged as they come, each line naming its node (a NODE column,
 * or a "node" key first in JSON). A node that cannot be reached or goes away
 * is reported once on stderr and the others go on; Ctrl-C ends every stream.
 */
import { AgentClient, type ClientAuth, DEFAULT_SERVER, describeError } from '../api/client';
import { discoverAgents, K8S_DEFAULTS, type K8sDiscovery } from '../api/k8s';
import type { EventFilter } from '../filter';
import type { AmberEvent } from '../sensor/events';
import { type ColumnName, columnsLayout, DEFAULT_COLUMNS, type OutputFormat } from './format';
import { UsageError } from './usage';

export const SERVER_OPTIONS = {
  server: { type: 'string', multiple: true },
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'token-file': { type: 'string' },
  k8s: { type: 'boolean' },
  'k8s-namespace': { type: 'string' },
  'k8s-selector': { type: 'string' },
  'k8s-port': { type: 'string' },
  kubeconfig: { type: 'string' },
} as const;

export const SERVER_USAGE = `  --server ADDR               an agent: unix:///path or host:port (default ${DEFAULT_SERVER});
                              repeat it to merge several agents' events (a NODE column)
  --tls-ca F --tls-cert F --tls-key F   PEM files for agents over TCP (mutual TLS)
  --token-file F              the bearer token, when the agents want one
  --k8s                       every agent of the cluster: their pods (--k8s-namespace, default ${K8S_DEFAULTS.namespace};
                              --k8s-selector, default ${K8S_DEFAULTS.selector}) on --k8s-port (default ${K8S_DEFAULTS.port}),
                              found through the Kubernetes API (--kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster)`;

export interface ServerOptionValues {
  server?: string[];
  'tls-ca'?: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  'token-file'?: string;
  k8s?: boolean;
  'k8s-namespace'?: string;
  'k8s-selector'?: string;
  'k8s-port'?: string;
  kubeconfig?: string;
}

/** The servers and how to authenticate to them, from the options. */
export function serversFromOptions(values: ServerOptionValues): { servers: string[] | undefined; auth: ClientAuth; k8s?: K8sDiscovery } {
  const tlsFiles = [values['tls-ca'], values['tls-cert'], values['tls-key']];
  const given = tlsFiles.filter((f) => f !== undefined).length;
  if (given !== 0 && given !== 3) throw new UsageError('--tls-ca, --tls-cert and --tls-key go together');
  const auth: ClientAuth = { tokenFile: values['token-file'] };
  if (given === 3) auth.tls = { ca: tlsFiles[0]!, cert: tlsFiles[1]!, key: tlsFiles[2]! };
  const servers = values.server && values.server.length > 0 ? values.server : undefined;
  const k8sFlags = ['k8s-namespace', 'k8s-selector', 'k8s-port', 'kubeconfig'] as const;
  if (!values.k8s) {
    const stray = k8sFlags.find((f) => values[f] !== undefined);
    if (stray) throw new UsageError(`--${stray} goes with --k8s`);
    return { servers, auth };
  }
  if (servers) throw new UsageError('--k8s and --server exclude each other');
  const port = values['k8s-port'] === undefined ? K8S_DEFAULTS.port : Number(values['k8s-port']);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`--k8s-port must be a port number, got "${values['k8s-port']}"`);
  const k8s: K8sDiscovery = {
    namespace: values['k8s-namespace'] ?? K8S_DEFAULTS.namespace,
    selector: values['k8s-selector'] ?? K8S_DEFAULTS.selector,
    port,
    kubeconfig: values.kubeconfig,
  };
  return { servers, auth, k8s };
}

/** One agent of a fan-out: its client and the node name it answered with. */
interface Node {
  client: AgentClient;
  name: string;
}

/**
 * The agents named by --server (default the local socket) or found by --k8s,
 * each asked its node name; unreachable ones are reported once and left out
 * (`requested` says how many there were).
 */
export async function connectNodes(
  servers: string[] | undefined,
  auth: ClientAuth,
  err: NodeJS.WritableStream,
  k8s?: K8sDiscovery,
): Promise<Node[] & { requested: number }> {
  let list = servers && servers.length > 0 ? servers : [DEFAULT_SERVER];
  if (k8s) {
    let found;
    try {
      found = await discoverAgents(k8s);
    } catch (e) {
      throw new Error(`--k8s: cannot list the agents' pods in namespace ${k8s.namespace}: ${(e as Error).message}`);
    }
    if (found.length === 0) throw new Error(`--k8s: no running pods match ${k8s.selector} in namespace ${k8s.namespace}`);
    list = found.map((a) => a.server);
  }
  const clients = list.map((s) => new AgentClient(s, auth)); // a malformed address throws here: a usage error, before any call
  const nodes = await Promise.all(
    clients.map(async (client) => {
      try {
        const status = await client.status();
        return { client, name: status.node };
      } catch (e) {
        err.write(`amber: ${client.address.text}: cannot reach the agent: ${describeError(e)}\n`);
        client.close();
        return null;
      }
    }),
  );
  return Object.assign(
    nodes.filter((n): n is Node => n !== null),
    { requested: list.length },
  );
}

/** Lines for stdout, with the node named when there are several. */
class Printer {
  private readonly layout: ReturnType<typeof columnsLayout>;

  constructor(
    private readonly out: NodeJS.WritableStream,
    private readonly format: OutputFormat,
    private readonly multi: boolean,
    names: string[],
    columns: readonly ColumnName[] | undefined,
    defaults: readonly ColumnName[] = DEFAULT_COLUMNS,
  ) {
    // chosen columns are shown as chosen; by default NODE comes first when several agents are merged
    const chosen = columns ?? (multi ? ['node', ...defaults] : defaults);
    this.layout = columnsLayout(chosen, { node: Math.max(4, ...names.map((n) => n.length)) });
  }

  header(): void {
    if (this.format === 'columns') this.out.write(`${this.layout.header}\n`);
  }

  /** Writes the events; resolves when stdout can take more (its backpressure slows the reading, so the agent's queue for us fills, not our memory). */
  async print(node: string, events: AmberEvent[]): Promise<void> {
    let text = '';
    if (this.format === 'columns') for (const e of events) text += `${this.layout.row(e, node)}\n`;
    else if (!this.multi) for (const e of events) text += `${JSON.stringify(e)}\n`;
    else for (const e of events) text += `${JSON.stringify({ node, ...e })}\n`;
    if (text && !this.out.write(text)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.out.off('drain', done);
          this.out.off('error', done);
          resolve();
        };
        this.out.once('drain', done);
        this.out.once('error', done);
      });
    }
  }
}

/** Until SIGINT/SIGTERM or the timeout: then `stop` runs once. Returns the un-registering. */
function onStop(timeoutMs: number | undefined, stop: () => void): () => void {
  const done = () => {
    cleanup();
    stop();
  };
  const timer = timeoutMs !== undefined ? setTimeout(done, timeoutMs) : undefined;
  process.on('SIGINT', done);
  process.on('SIGTERM', done);
  const cleanup = () => {
    process.off('SIGINT', done);
    process.off('SIGTERM', done);
    clearTimeout(timer);
  };
  return cleanup;
}

export interface RemoteTraceOptions {
  servers: string[] | undefined;
  auth: ClientAuth;
  k8s?: K8sDiscovery;
  filter: EventFilter;
  format: OutputFormat;
  columns?: readonly ColumnName[];
  timeoutMs?: number;
}

/** amber trace against agents. Exit code 0, or 1 when no agent could be reached. */
export async function remoteTrace(opts: RemoteTraceOptions, out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const nodes = await connectNodes(opts.servers, opts.auth, err, opts.k8s);
  if (nodes.length === 0) return 1;
  const multi = (opts.servers?.length ?? 0) > 1 || opts.k8s !== undefined;
  const printer = new Printer(out, opts.format, multi, nodes.map((n) => n.name), opts.columns);
  printer.header();
  let stopping = false;
  const cleanup = onStop(opts.timeoutMs, () => {
    stopping = true;
    for (const n of nodes) n.client.cancel();
  });
  err.write(`amber: tracing ${nodes.map((n) => n.name).join(', ')} (${opts.timeoutMs !== undefined ? `for ${opts.timeoutMs / 1000}s` : 'Ctrl-C to stop'})\n`);
  const totals = new Map<string, { events: number; dropped: number }>();
  await Promise.all(
    nodes.map(async ({ client, name }) => {
      const total = { events: 0, dropped: 0 };
      totals.set(name, total);
      const { items, dropped } = client.trace(opts.filter);
      try {
        for await (const item of items) {
          if ('dropped' in item) {
            total.dropped += item.dropped;
            err.write(`amber: ${name}: ${item.dropped} events dropped: this client did not keep up\n`);
          } else {
            total.events += item.events.length;
            await printer.print(name, item.events);
          }
        }
        if (!stopping) {
          const missed = await dropped;
          err.write(`amber: ${name}: the agent ended the stream (it is stopping)${missed ? `; ${missed} events dropped in all` : ''}\n`);
        }
      } catch (e) {
        if (!stopping) err.write(`amber: ${name}: lost the agent (${client.address.text}): ${describeError(e)}\n`);
      } finally {
        client.close();
      }
    }),
  );
  cleanup();
  for (const [name, t] of totals) err.write(`amber: ${name}: ${t.events} events; dropped for this client: ${t.dropped}\n`);
  return 0;
}

/** amber buffer query against agents, one after the other. Exit code 0, or 1 when an agent failed. */
export async function remoteQuery(
  opts: { servers: string[] | undefined; auth: ClientAuth; k8s?: K8sDiscovery; filter: EventFilter; format: OutputFormat; columns?: readonly ColumnName[]; defaultColumns?: readonly ColumnName[]; limit: number },
  out: NodeJS.WritableStream,
  err: NodeJS.WritableStream,
): Promise<number> {
  const nodes = await connectNodes(opts.servers, opts.auth, err, opts.k8s);
  if (nodes.length === 0) return 1;
  const multi = (opts.servers?.length ?? 0) > 1 || opts.k8s !== undefined;
  const printer = new Printer(out, opts.format, multi, nodes.map((n) => n.name), opts.columns, opts.defaultColumns);
  printer.header();
  let stopping = false;
  const cleanup = onStop(undefined, () => {
    stopping = true;
    for (const n of nodes) n.client.cancel();
  });
  let code = 0;
  for (const { client, name } of nodes) {
    if (stopping) break;
    try {
      for await (const batch of client.query(opts.filter, Number.isFinite(opts.limit) ? opts.limit : 0)) await printer.print(name, batch);
    } catch (e) {
      err.write(`amber: ${name}: the query failed: ${describeError(e)}\n`);
      code = 1;
    } finally {
      client.close();
    }
  }
  cleanup();
  return code;
}
