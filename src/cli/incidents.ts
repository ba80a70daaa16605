/**
 * amber incidents: open, list, show, pull and release one agent's incidents
 * through its API (--server, default the local socket).
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { AgentClient, DEFAULT_SERVER, describeError, type IncidentDetail, type IncidentTarget } from '../api/client';
import { INCIDENT_ID, MAX_PID } from '../api/incident-codec';
import { createExclusive } from '../buffer/datadir';
import type { IncidentSummary, ResponseSummary } from '../incident/incidents';
import { ARTIFACT_KINDS, type Manifest } from '../incident/manifest';
import { formatBytes } from './buffer';
import { durationOption } from './filter-options';
import { clean } from './format';
import { note, OutputWriter } from './output';
import { serversFromOptions } from './remote';
import { UsageError } from './usage';

/** `--wait` without a duration: long enough for a capture of a few GiB of memory and its packing. */
export const DEFAULT_WAIT_MS = 10 * 60_000;
const WAIT_RANGE = { min: 1000, max: 24 * 3600_000, text: '1s to 24h' };
/** How often --wait asks the agent. */
const POLL_MS = 500;
/** The progress bar is redrawn at most this often. */
const PROGRESS_MS = 200;
const BAR_WIDTH = 30;

const SERVER_USAGE = `  --server ADDR               the agent: unix:///path or host:port (default ${DEFAULT_SERVER})
  --tls-ca F --tls-cert F --tls-key F   PEM files for an agent over TCP (mutual TLS)
  --token-file F              the bearer token, when the agent wants one`;

export const INCIDENTS_USAGE = `usage: amber incidents <command> [--server ADDR] [options]
  trigger --container ID | --pod NS/NAME | --pid PID [--reason TEXT] [--wait [DURATION]]
                              open an incident (or join the one open for the same container);
                              --reason: why, for the manifest (at most 1 KiB); prints its ID.
                              --wait: until the capture is complete or failed
                              (default ${DEFAULT_WAIT_MS / 60_000}m; ${WAIT_RANGE.text}), then its summary
  list [-o columns|json]      the agent's incidents, oldest first
  show ID [-o text|json]      one incident: trigger, container, artifacts, uploads, responses
  pull ID --out DIR [--progress]
                              download its archive to DIR/<ID>.tar.gz (never over an existing file),
                              checked against the size and sha256 the agent sent; a progress bar on
                              stderr when it is a terminal, or with --progress
  release ID                  lift the incident's network cut and freeze
${SERVER_USAGE}
exits 0 on success, 1 when the agent refused or failed (its status and reason on stderr), 2 on usage errors`;

const CONNECTION_OPTIONS = {
  server: { type: 'string', multiple: true },
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
  'token-file': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type ConnectionValues = { server?: string[]; 'tls-ca'?: string; 'tls-cert'?: string; 'tls-key'?: string; 'token-file'?: string };

/** The one agent these commands talk to. */
function clientFromOptions(values: ConnectionValues): AgentClient {
  const { servers, auth } = serversFromOptions(values);
  if (servers && servers.length > 1) throw new UsageError('amber incidents talks to one agent: give --server once');
  return new AgentClient(servers?.[0] ?? DEFAULT_SERVER, auth);
}

export async function incidentsCommand(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const [sub, ...rest] = argv;
  const run = SUBCOMMANDS[sub as keyof typeof SUBCOMMANDS];
  if (sub === undefined || sub === 'help' || sub === '--help' || sub === '-h') {
    out.write(`${INCIDENTS_USAGE}\n`);
    return sub === undefined ? 2 : 0;
  }
  if (!run) throw new UsageError(`unknown incidents command "${sub}"\n${INCIDENTS_USAGE}`);
  return run(rest, out, err);
}

type Subcommand = (argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream) => Promise<number>;
const SUBCOMMANDS: Record<string, Subcommand> = { trigger, list, show, pull, release };

/** Runs a call against the agent; its refusal is a line on stderr and exit 1. */
async function withClient(values: ConnectionValues, err: NodeJS.WritableStream, f: (client: AgentClient) => Promise<number>): Promise<number> {
  const client = clientFromOptions(values);
  try {
    return await f(client);
  } catch (e) {
    if (e instanceof UsageError) throw e;
    note(err, `amber: ${describeError(e)}\n`);
    return 1;
  } finally {
    client.close();
  }
}

function oneId(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new UsageError(`${positionals.length === 0 ? 'which incident?' : 'one incident at a time'}\nusage: amber incidents ${what}`);
  return positionals[0];
}

// ---------------------------------------------------------------- trigger

/** `--wait` takes an optional duration, which parseArgs cannot say: a bare --wait gets the default. */
function expandWait(argv: string[]): string[] {
  return argv.map((a, i) => (a === '--wait' && (i + 1 >= argv.length || argv[i + 1].startsWith('-')) ? `--wait=${DEFAULT_WAIT_MS}ms` : a));
}

async function trigger(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const usage = 'trigger --container ID | --pod NS/NAME | --pid PID [--reason TEXT] [--wait [DURATION]]';
  const { values, positionals } = parseArgs({
    args: expandWait(argv),
    allowPositionals: true,
    options: {
      ...CONNECTION_OPTIONS,
      container: { type: 'string' },
      pod: { type: 'string' },
      pid: { type: 'string' },
      reason: { type: 'string', default: '' },
      wait: { type: 'string' },
    },
  });
  if (values.help) {
    out.write(`${INCIDENTS_USAGE}\n`);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"\nusage: amber incidents ${usage}`);
  const given = (['container', 'pod', 'pid'] as const).filter((k) => values[k] !== undefined);
  if (given.length !== 1) {
    throw new UsageError(`${given.length === 0 ? 'what to capture?' : `--${given.join(' and --')} exclude each other`}: give exactly one of --container, --pod, --pid\nusage: amber incidents ${usage}`);
  }
  let target: IncidentTarget;
  if (values.container !== undefined) target = { container: values.container };
  else if (values.pod !== undefined) {
    if (values.pod.split('/').length !== 2) throw new UsageError(`--pod must be NAMESPACE/NAME, got "${clean(values.pod)}"`);
    target = { pod: values.pod };
  } else {
    const pid = Number(values.pid);
    if (!/^\d+$/.test(values.pid!) || pid < 1 || pid > MAX_PID) throw new UsageError(`--pid must be a process ID (1 to ${MAX_PID}), got "${clean(values.pid!)}"`);
    target = { pid };
  }
  const waitMs = values.wait === undefined ? undefined : durationOption('--wait', values.wait, WAIT_RANGE);
  return withClient(values, err, async (client) => {
    const r = await client.triggerIncident(target, values.reason);
    const output = new OutputWriter(out);
    output.write(`${r.id}\n`);
    if (r.joined) note(err, `amber: joined incident ${r.id}, already open for this container (${r.state})\n`);
    if (waitMs === undefined) {
      await output.flush();
      return 0;
    }
    await output.flush();
    const detail = await waitForIncident(client, r.id, waitMs, err);
    output.write(formatIncident(detail));
    await output.flush();
    return detail.summary.state === 'complete' ? 0 : 1;
  });
}

/** Asks until the capture is complete or failed; an Error when `waitMs` passes first. */
async function waitForIncident(client: AgentClient, id: string, waitMs: number, err: NodeJS.WritableStream): Promise<IncidentDetail> {
  const deadline = Date.now() + waitMs;
  let told = '';
  for (;;) {
    const detail = await client.getIncident(id);
    const state = detail.summary.state;
    if (state === 'complete' || state === 'failed') return detail;
    if (state !== told) {
      note(err, `amber: incident ${id} is ${state}; waiting\n`);
      told = state;
    }
    if (Date.now() + POLL_MS > deadline) throw new Error(`incident ${id} is still ${state} after ${waitMs / 1000}s (--wait); it goes on in the agent`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

// ---------------------------------------------------------------- list

async function list(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { ...CONNECTION_OPTIONS, output: { type: 'string', short: 'o', default: 'columns' } } });
  if (values.help) {
    out.write(`${INCIDENTS_USAGE}\n`);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"\nusage: amber incidents list [-o columns|json]`);
  if (values.output !== 'columns' && values.output !== 'json') throw new UsageError(`-o must be columns or json, got "${values.output}"`);
  return withClient(values, err, async (client) => {
    const incidents = await client.listIncidents();
    const output = new OutputWriter(out);
    output.write(values.output === 'json' ? incidents.map((s) => `${JSON.stringify(s)}\n`).join('') : formatList(incidents));
    await output.flush();
    return 0;
  });
}

export const LIST_HEADER = ['ID', 'STATE', 'CREATED', 'TRIGGER', 'CONTAINER', 'POD', 'SIZE', 'UPLOADS'] as const;

/** One row per incident, columns as wide as their widest cell. */
export function formatList(incidents: IncidentSummary[]): string {
  const rows = incidents.map((s) => [
    s.id,
    s.state,
    s.createdAt,
    triggerName(s),
    s.container || (s.containerId ? s.containerId.slice(0, 12) : '-'),
    s.pod || '-',
    s.bytes > 0 ? formatBytes(s.bytes) : '-',
    s.uploads.length ? s.uploads.map((u) => `${u.sink}:${u.state}`).join(',') : '-',
  ]);
  return table([...LIST_HEADER], rows, new Set([6]));
}

const triggerName = (s: IncidentSummary) => (s.trigger.rule ? `${s.trigger.kind}:${s.trigger.rule}` : s.trigger.kind);

/** Cells cleaned and padded; `right`: columns aligned right (numbers); the last column is not padded. */
function table(header: string[], rows: string[][], right = new Set<number>()): string {
  const cells = [header, ...rows.map((r) => r.map(clean))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : right.has(i) ? c.padStart(widths[i]) : c.padEnd(widths[i])))
        .join('  ')
        .trimEnd(),
    )
    .map((line) => `${line}\n`)
    .join('');
}

// ---------------------------------------------------------------- show

async function show(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { ...CONNECTION_OPTIONS, output: { type: 'string', short: 'o', default: 'text' } } });
  if (values.help) {
    out.write(`${INCIDENTS_USAGE}\n`);
    return 0;
  }
  const id = oneId(positionals, 'show ID [-o text|json]');
  if (values.output !== 'text' && values.output !== 'json') throw new UsageError(`-o must be text or json, got "${values.output}"`);
  return withClient(values, err, async (client) => {
    const detail = await client.getIncident(id);
    const output = new OutputWriter(out);
    if (values.output === 'json') {
      const manifest = parseManifest(detail.manifest);
      output.write(`${JSON.stringify({ ...detail.summary, manifest: manifest.value, signature: detail.signature?.toString('base64') ?? null })}\n`);
    } else output.write(formatIncident(detail));
    await output.flush();
    return 0;
  });
}

/** The manifest the agent sent, read as untrusted JSON (only fields of the right type are shown). */
function parseManifest(bytes: Buffer | null): { value: Manifest | null; problem: string } {
  if (!bytes) return { value: null, problem: '' };
  try {
    const v = JSON.parse(bytes.toString('utf8')) as unknown;
    if (typeof v !== 'object' || v === null || !Array.isArray((v as Manifest).artifacts)) return { value: null, problem: 'the manifest has no artifact list' };
    return { value: v as Manifest, problem: '' };
  } catch (e) {
    return { value: null, problem: `the manifest is not JSON: ${(e as Error).message}` };
  }
}

/** An incident for people: the summary, then its artifacts (once complete), uploads and responses. */
export function formatIncident(detail: IncidentDetail): string {
  const s = detail.summary;
  const lines: string[] = [`Incident ${s.id}`];
  const row = (label: string, value: string) => lines.push(`  ${label.padEnd(10)} ${value}`);
  row('state', s.state);
  row('created', s.createdAt);
  const by = s.trigger.requestedBy ? ` (requested by ${s.trigger.requestedBy})` : '';
  row('trigger', `${triggerName(s)}${s.trigger.reason ? `: ${s.trigger.reason}` : ''}${by}`);
  if (s.joined > 0) row('joined', `${s.joined} more trigger(s) for the same container`);
  if (s.containerId) row('container', [s.containerId.slice(0, 12), s.container && `name ${s.container}`, s.image && `image ${s.image}`].filter(Boolean).join('  '));
  else row('container', '- (a host process)');
  if (s.pod) row('pod', s.pod);
  if (s.bytes > 0) row('archive', `${s.id}.tar.gz, ${s.bytes} bytes (${formatBytes(s.bytes)})`);
  if (s.error) row('error', s.error);
  const manifest = parseManifest(detail.manifest);
  if (manifest.problem) row('manifest', manifest.problem);
  if (manifest.value) {
    const artifacts = manifest.value.artifacts.filter((a) => typeof a === 'object' && a !== null);
    const total = artifacts.reduce((n, a) => n + (Number.isFinite(a.size) ? a.size : 0), 0);
    lines.push('', `Artifacts (${artifacts.length}, ${total} bytes)${detail.signature ? '; manifest signed' : ''}`);
    const rows = artifacts.map((a) => [
      String(a.path),
      (ARTIFACT_KINDS as readonly string[]).includes(a.kind) ? a.kind : `? ${String(a.kind)}`,
      a.pid === undefined ? '' : String(a.pid),
      String(a.size),
      typeof a.sha256 === 'string' ? a.sha256.slice(0, 16) : '',
    ]);
    lines.push(...indent(table(['PATH', 'KIND', 'PID', 'SIZE', 'SHA256'], rows, new Set([2, 3]))));
  }
  if (s.uploads.length) {
    lines.push('', 'Uploads');
    const rows = s.uploads.map((u) => [u.sink, u.state, String(u.attempts), u.remote || u.lastError]);
    lines.push(...indent(table(['SINK', 'STATE', 'ATTEMPTS', 'WHERE / LAST ERROR'], rows, new Set([2]))));
  }
  if (s.responses.length) {
    lines.push('', 'Responses');
    lines.push(...indent(formatResponses(s.responses)));
  }
  return `${lines.map(clean).join('\n')}\n`;
}

const indent = (text: string) => text.trimEnd().split('\n').map((l) => `  ${l}`);

function formatResponses(responses: ResponseSummary[]): string {
  return table(['KIND', 'STATE', 'AT'], responses.map((r) => [r.kind, r.state, r.at]));
}

// ---------------------------------------------------------------- pull

async function pull(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { ...CONNECTION_OPTIONS, out: { type: 'string' }, progress: { type: 'boolean', default: false } },
  });
  if (values.help) {
    out.write(`${INCIDENTS_USAGE}\n`);
    return 0;
  }
  const usage = 'pull ID --out DIR [--progress]';
  const id = oneId(positionals, usage);
  if (values.out === undefined || values.out === '') throw new UsageError(`where to? give --out DIR\nusage: amber incidents ${usage}`);
  // the ID names a file here: only what the agent's IDs look like (the agent checks it too)
  if (!INCIDENT_ID.test(id)) throw new UsageError(`"${clean(id)}" is not an incident ID`);
  const dir = values.out;
  let st;
  try {
    st = await fsp.stat(dir);
  } catch (e) {
    throw new Error(`--out ${dir}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (e as Error).message}`);
  }
  if (!st.isDirectory()) throw new Error(`--out ${dir}: not a directory`);
  const final = path.join(dir, `${id}.tar.gz`);
  if (await exists(final)) throw new Error(`${final} already exists; not overwriting it`);
  const bar = values.progress || (err as NodeJS.WriteStream).isTTY === true;
  return withClient(values, err, async (client) => {
    let interrupted = false;
    const stop = () => {
      interrupted = true;
      client.cancel();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    const tmp = path.join(dir, `.${id}.tar.gz.${randomBytes(4).toString('hex')}.part`);
    let fh: Awaited<ReturnType<typeof createExclusive>> | undefined;
    let placed = false;
    try {
      const started = Date.now();
      const archive = await client.pullIncident(id);
      fh = await createExclusive(tmp, 0o600);
      const hash = createHash('sha256');
      let received = 0;
      const progress = bar ? progressBar(err, id, archive.size, started) : undefined;
      for await (const chunk of archive.chunks) {
        received += chunk.length;
        if (received > archive.size) throw new Error(`the agent sent more than the ${archive.size} bytes it announced`);
        hash.update(chunk);
        await fh.write(chunk);
        progress?.(received, false);
      }
      if (interrupted) throw new Error(`interrupted after ${received} of ${archive.size} bytes`);
      if (received !== archive.size) throw new Error(`the stream ended after ${received} of the ${archive.size} bytes announced`);
      const sha256 = hash.digest('hex');
      if (sha256 !== archive.sha256) throw new Error(`the archive's sha256 is ${sha256}, not the ${archive.sha256} the agent announced`);
      progress?.(received, true);
      await fh.sync();
      await fh.close();
      fh = undefined;
      await placeWithoutOverwrite(tmp, final);
      placed = true;
      const seconds = (Date.now() - started) / 1000;
      note(err, `amber: pulled incident ${id}: ${received} bytes (${formatBytes(received)}) in ${seconds.toFixed(1)}s, sha256 ${sha256} matches\n`);
      const output = new OutputWriter(out);
      output.write(`${final}\n`);
      await output.flush();
      return 0;
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      await fh?.close().catch(() => {});
      if (!placed) await fsp.unlink(tmp).catch(() => {});
    }
  });
}

async function exists(file: string): Promise<boolean> {
  try {
    await fsp.lstat(file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/** Gives tmp the final name unless something took it meanwhile: link() fails on an existing name where rename() would replace it. */
async function placeWithoutOverwrite(tmp: string, final: string): Promise<void> {
  try {
    await fsp.link(tmp, final);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new Error(`${final} appeared while pulling; not overwriting it`);
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw e;
    // a file system without hard links: the check and the rename are as close as they can be
    if (await exists(final)) throw new Error(`${final} appeared while pulling; not overwriting it`);
    await fsp.rename(tmp, final);
    return;
  }
  await fsp.unlink(tmp);
}

/** A progress line redrawn in place on stderr, at most every PROGRESS_MS; the last call ends the line. */
function progressBar(err: NodeJS.WritableStream, id: string, size: number, started: number): (done: number, last: boolean) => void {
  const tty = (err as NodeJS.WriteStream).isTTY === true;
  let drawn = 0;
  return (done, last) => {
    const now = Date.now();
    if (!last && now - drawn < PROGRESS_MS) return;
    drawn = now;
    const fraction = size > 0 ? done / size : 1;
    const filled = Math.round(fraction * BAR_WIDTH);
    const rate = done / Math.max(0.001, (now - started) / 1000);
    const line = `${id} [${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}%  ${formatBytes(done)} / ${formatBytes(size)}  ${formatBytes(Math.round(rate))}/s`;
    // on a terminal the rest of a longer earlier line is erased; elsewhere (--progress into a file) no escapes
    note(err, `\r${clean(line)}${tty ? '\x1b[K' : ''}${last ? '\n' : ''}`);
  };
}

// ---------------------------------------------------------------- release

async function release(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: CONNECTION_OPTIONS });
  if (values.help) {
    out.write(`${INCIDENTS_USAGE}\n`);
    return 0;
  }
  const id = oneId(positionals, 'release ID');
  return withClient(values, err, async (client) => {
    const responses = await client.releaseIncident(id);
    const output = new OutputWriter(out);
    output.write(responses.length ? formatResponses(responses) : `incident ${id} had no responses in force\n`);
    await output.flush();
    return 0;
  });
}
