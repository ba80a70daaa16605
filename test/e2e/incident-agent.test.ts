/**
 * Incidents through the whole agent, on the real kernel with real podman
 * containers and real servers on loopback:
 *  - an agent process killed (-9) while it dumps a frozen container leaves it
 *    frozen; the next agent on the same data dir thaws it at start, logs it,
 *    and removes the unfinished bundle;
 *  - a rule's `respond: [cut-network]` cuts the container's network after the
 *    capture (the container's own network namespace, a peer in it through
 *    nsenter; bpffs is a private mount), and release lets traffic through again;
 *  - bundles reach an S3 sink (s3rver), and an upload pending when the agent
 *    stops completes once a new agent runs on the same data dir.
 * Needs root; fails (never skips) when BPF cannot load.
 */
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pino, { type Logger } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type Agent } from '../../src/agent';
import { loadConfig } from '../../src/config';
import { cgroupsOf, FROZEN_DIR } from '../../src/incident/freezer';
import type { IncidentSummary } from '../../src/incident/incidents';
import { INCIDENTS_DIR } from '../../src/incident/manifest';
import { Responses } from '../../src/incident/responses';
import { UPLOADS_DIR } from '../../src/incident/uploads';
import { mountsOfType } from '../../src/sensor/preflight';
import { startAgentProcess, stopAgentProcess, type RunningAgent } from '../helpers/agent';
import { waitForProgramsGone } from '../helpers/bpf';
import { buildHolder, freezeOf, startHolder, threadStates, type Holder, v2Dir } from '../helpers/memory-holder';
import { ensureTestImage, podman, startContainer, uniqueName, type Container } from '../helpers/podman';
import { S3RVER_CREDENTIALS, S3rverProcess } from '../helpers/s3rver';

const execFileP = promisify(execFile);
const PEER = path.resolve(__dirname, '../helpers/tcp-peer.cjs');
const OUT_PORT = 7001; // the peer listens in the container's netns, the container connects out
const IN_PORT = 7002; // the container listens, the peer connects in

type LogLine = Record<string, unknown>;

/** A pino logger whose JSON lines land in `lines`. */
function recordingLog(lines: LogLine[]): Logger {
  return pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
}

/** The JSON lines an agent process logged. */
function linesOf(text: string): LogLine[] {
  return text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine);
}

async function until<T>(what: string, check: () => Promise<T | undefined> | T | undefined, ms = 60_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}



describe('a container frozen by an agent killed mid-dump', () => {
  // made in beforeAll: a describe that is filtered out leaves nothing behind
  let tmp = '';
  let dataDir = '';
  let binDir = '';
  const containers: string[] = [];
  const env = { AMBER_INCIDENT_MEMORY_ALL_PROCESSES: 'true', AMBER_INCIDENT_WINDOW_BEFORE: '1m', AMBER_INCIDENT_WINDOW_AFTER: '500ms' };
  let holder: Holder | undefined;
  let cgroupDir = '';
  let first: RunningAgent | undefined;
  let second: RunningAgent | undefined;

  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-incident-agent-'));
    dataDir = path.join(tmp, 'data');
    binDir = path.join(tmp, 'bin');
    fs.mkdirSync(binDir, { mode: 0o755 });
    buildHolder(binDir);
    await ensureTestImage();
    // 1 GiB of filler: the dump of it lasts long enough to kill the agent in the middle
    holder = await startHolder(binDir, 1024, 1, containers, 'amber-incident-agent');
    cgroupDir = v2Dir(holder.pid);
  });

  afterAll(async () => {
    await stopAgentProcess(first);
    await stopAgentProcess(second);
    // whatever failed: the container is not left frozen, then removed
    if (cgroupDir && fs.existsSync(cgroupDir) && freezeOf(cgroupDir) === '1') fs.writeFileSync(path.join(cgroupDir, 'cgroup.freeze'), '0');
    for (const id of containers) await podman('rm', '-f', '-t', '0', id).catch((e) => console.error(e));
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    if (dataDir) fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
  });

  it('kill -9 while frozen leaves it frozen; the next start thaws it, logs it and removes the unfinished bundle', async () => {
    const h = holder!;
    first = await startAgentProcess(dataDir, env);
    // drift: a binary dropped into /tmp and run opens an incident; allProcesses dumps the holder too
    await podman('exec', h.id, '/bin/sh', '-c', 'mkdir /tmp/k && cp /bin/busybox /tmp/k/sleep && chmod +x /tmp/k/sleep');
    await podman('exec', '-d', h.id, '/tmp/k/sleep', '300');
    const capturing = await until('the incident to start capturing', () => linesOf(first!.logs()).find((l) => l.msg === 'incident: capturing'));
    expect(capturing).toMatchObject({ containerId: h.id, trigger: 'drift', rule: 'drift' });
    const id = capturing.id as string;
    const tmpBundle = path.join(dataDir, INCIDENTS_DIR, `.tmp-${id}`);
    const holderCore = path.join(tmpBundle, 'memory', `${h.pid}.core`);
    // the trigger's process is dumped first, then the holder: its core exists and its cgroup is frozen
    await until(
      'the holder dumped with its cgroup frozen',
      () => {
        if (fs.existsSync(holderCore) && freezeOf(cgroupDir) === '1') return true;
        if (first!.logs().includes('incident: bundle signed and verified')) throw new Error('the capture ended before the holder was seen frozen');
        return undefined;
      },
      60_000,
      2,
    );
    first.child.kill('SIGKILL');
    expect(await first.exited).toBeNull();
    expect(first.child.signalCode).toBe('SIGKILL');
    expect(linesOf(first.logs()).some((l) => l.msg === 'incident: bundle signed and verified')).toBe(false);
    // left frozen by the kill, recorded for the next start
    const steps = first.logs().split('\n').filter((l) => l.includes('"event":"freezer-') || l.includes('"event":"incident"')).join('\n');
    expect(freezeOf(cgroupDir), `the first agent logged:\n${steps}`).toBe('1');
    expect(fs.readdirSync(path.join(dataDir, INCIDENTS_DIR, FROZEN_DIR)), `the first agent logged:\n${steps}`).toHaveLength(1);
    expect(fs.existsSync(tmpBundle)).toBe(true);

    second = await startAgentProcess(dataDir, env);
    expect(freezeOf(cgroupDir)).toBe('0');
    const logged = linesOf(second.logs());
    const cgroup = cgroupsOf(fs.readFileSync(`/proc/${h.pid}/cgroup`, 'utf8')).v2!;
    expect(logged.filter((l) => l.msg === 'thawed a cgroup a previous run left frozen')).toMatchObject([{ level: 40, cgroup, dir: cgroupDir, pid: h.pid }]);
    expect(logged.filter((l) => l.msg === 'thawed cgroups a previous run left frozen')).toMatchObject([{ level: 40, thawed: [cgroupDir] }]);
    expect(logged.filter((l) => l.msg === 'unfinished incident bundles of a previous run')).toMatchObject([{ level: 40, removed: [`.tmp-${id}`], packed: [] }]);
    expect(fs.existsSync(tmpBundle)).toBe(false);
    expect(fs.readdirSync(path.join(dataDir, INCIDENTS_DIR, FROZEN_DIR))).toEqual([]);
    // the container's processes run on: the holder's threads sleep untraced, a new process starts and answers
    expect(threadStates(h.pid)).toEqual(['live tracer 0', 'live tracer 0']);
    expect(await podman('exec', h.id, '/bin/busybox', 'echo', 'alive')).toBe('alive');
    await stopAgentProcess(second, 'SIGTERM');
    expect(await second.exited).toBe(0);
  }, 120_000);
});

describe("a rule's cut-network response", () => {
  let tmp = '';
  let dataDir = '';
  let bpffs = '';
  const logLines: LogLine[] = [];
  const progIds: number[] = [];
  let agent: Agent | undefined;
  let containerId = '';
  let containerPid = 0;
  let peer: ChildProcess | undefined;
  let peerOutput = '';
  const connections = () => peerOutput.split('\n').filter((l) => l === 'connection').length;

  /** The container connects out to the peer: what busybox nc printed, and its exit status. */
  const connectOut = () => podman('exec', containerId, 'sh', '-c', `echo ping | busybox nc -w 2 127.0.0.1 ${OUT_PORT} 2>&1; echo rc=$?`);
  /** The peer connects in to the container's listener: what it read, or "timeout". */
  const connectIn = async () =>
    (await execFileP('nsenter', [`--net=/proc/${containerPid}/ns/net`, process.execPath, PEER, 'connect', String(IN_PORT), '2000'])).stdout.trim();

  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-incident-cut-'));
    dataDir = path.join(tmp, 'data');
    bpffs = path.join(tmp, 'bpffs');
    const rulesFile = path.join(tmp, 'rules.yaml');
    // rules/default.yaml's shape, with one incident rule that cuts the network
    fs.writeFileSync(
      rulesFile,
      [
        'version: 1',
        'lists:',
        '  cut_tools: [/tmp/cutme/*]',
        'rules:',
        '  - name: cut-on-tool',
        '    description: a tool from /tmp/cutme ran; capture, then cut the container off the network',
        '    action: incident',
        '    match:',
        '      type: exec',
        '      path: $cut_tools',
        '    respond: [cut-network]',
        '',
      ].join('\n'),
    );
    const image = await ensureTestImage();
    // its own network namespace (loopback only); the peer runs there through nsenter, outside its cgroup
    containerId = await podman('run', '-d', '--network', 'none', '--name', uniqueName('amber-incident-cut'), image, 'sleep', '3600');
    containerPid = Number(await podman('inspect', '-f', '{{.State.Pid}}', containerId));
    await podman('exec', '-d', containerId, 'busybox', 'nc', '-ll', '-p', String(IN_PORT), '-e', 'echo', 'hello');
    peer = spawn('nsenter', [`--net=/proc/${containerPid}/ns/net`, process.execPath, PEER, 'listen', String(OUT_PORT)], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      peer!.once('exit', (code) => reject(new Error(`the TCP peer exited (${code})`)));
      peer!.stdout!.on('data', (d: Buffer) => {
        peerOutput += d.toString();
        if (peerOutput.includes('ready\n')) resolve();
      });
    });
    const config = loadConfig({
      overrides: [
        [['dataDir'], dataDir],
        [['api', 'listen'], [`unix://${dataDir}-run/amber.sock`]],
        [['detect', 'rules'], rulesFile],
        [['incident', 'bpffs'], bpffs],
        [['incident', 'window'], { before: '1m', after: '500ms' }],
      ],
    });
    agent = await startAgent(config, recordingLog(logLines));
  });

  afterAll(async () => {
    const failures: unknown[] = [];
    await agent?.close().catch((e) => failures.push(e));
    // a cut outlives the agent by design: released here by its incident, whatever failed
    if (dataDir) {
      const responses = new Responses({ dataDir, bpffs });
      try {
        for (const cut of await responses.listCuts()) await responses.releaseNetwork(cut.incidentId);
      } catch (err) {
        failures.push(err);
      }
    }
    if (peer && peer.exitCode === null) {
      await new Promise((resolve) => {
        peer!.once('exit', resolve);
        peer!.kill('SIGTERM');
      });
    }
    if (containerId) await podman('rm', '-f', '-t', '0', containerId).catch((e) => failures.push(e));
    if (bpffs && mountsOfType(fs.readFileSync('/proc/self/mountinfo', 'utf8'), 'bpf').includes(bpffs)) await execFileP('umount', [bpffs]).catch((e) => failures.push(e));
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    if (dataDir) fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
    expect(await waitForProgramsGone(progIds)).toEqual([]);
    expect(failures).toEqual([]);
  });

  it('the tool opens an incident; after the capture the network is cut; release lets traffic through again', async () => {
    expect(await connectOut()).toBe('pong\nrc=0');
    expect(connections()).toBe(1);
    expect(await connectIn()).toBe('data:hello');

    await podman('exec', containerId, '/bin/sh', '-c', 'mkdir /tmp/cutme && cp /bin/busybox /tmp/cutme/sleep && chmod +x /tmp/cutme/sleep');
    await podman('exec', '-d', containerId, '/tmp/cutme/sleep', '300');
    const incidents = agent!.incidents!;
    const found = await until('the rule to open an incident', async () => {
      const list = (await incidents.list()).filter((s) => s.containerId === containerId);
      return list.length > 0 ? list : undefined;
    });
    expect(found).toHaveLength(1);
    const id = found[0].id;
    const shown = await until('the response', async () => {
      const s = (await incidents.show(id))!;
      // the responses run once the bundle is signed, before the archive is packed (then complete)
      return s.summary.responses.length > 0 && s.summary.state === 'complete' ? s : undefined;
    });
    expect(shown.summary).toMatchObject({
      id,
      state: 'complete',
      containerId,
      trigger: { kind: 'rule', rule: 'cut-on-tool', reason: 'exec matched cut-on-tool' },
      error: '',
      responses: [{ kind: 'cut-network', state: 'in force', at: expect.any(String) }],
    });
    expect(shown.manifestObject!.trigger).toMatchObject({ kind: 'rule', rule: 'cut-on-tool' });
    const cgroupPath = cgroupsOf(fs.readFileSync(`/proc/${containerPid}/cgroup`, 'utf8')).v2!;
    expect(logLines.filter((l) => l.event === 'incident-response')).toMatchObject([{ id, kind: 'cut-network', cgroupPath, msg: 'incident response: cut-network' }]);

    // the cut, pinned on the private bpffs and recorded
    const record = JSON.parse(fs.readFileSync(path.join(dataDir, INCIDENTS_DIR, '.responses', `${id}.json`), 'utf8')) as { links: { direction: string; progId: number; pin: string }[] };
    progIds.push(...record.links.map((l) => l.progId));
    expect(record.links.map((l) => [l.direction, l.pin])).toEqual([
      ['ingress', path.join(bpffs, 'amber/netcut', id, 'ingress')],
      ['egress', path.join(bpffs, 'amber/netcut', id, 'egress')],
    ]);
    const responses = new Responses({ dataDir, bpffs });
    expect(await responses.listCuts()).toMatchObject([{ incidentId: id, cgroupPath, inForce: true, pinned: true, recorded: true }]);

    // nothing gets out or in
    expect(await connectOut()).toBe('nc: timed out\nrc=1');
    expect(connections()).toBe(1);
    expect(await connectIn()).toBe('timeout');

    const released = await incidents.release(id);
    expect(released).toEqual([{ kind: 'cut-network', state: 'released', at: expect.any(String) }]);
    expect((await incidents.show(id))!.summary.responses).toEqual([{ kind: 'cut-network', state: 'released', at: expect.any(String) }]);
    expect(fs.readdirSync(path.join(bpffs, 'amber/netcut'))).toEqual([]);
    expect(await waitForProgramsGone(progIds)).toEqual([]);
    expect(await responses.listCuts()).toEqual([]);

    expect(await connectOut()).toBe('pong\nrc=0');
    expect(connections()).toBe(2);
    expect(await connectIn()).toBe('data:hello');
  }, 120_000);
});

describe('uploads through the agent (s3rver)', () => {
  let tmp = '';
  let dataDir = '';
  let keyIdFile = '';
  let secretFile = '';
  const PREFIX = 'amber/node-1/';
  const agents: Agent[] = [];
  let server: S3rverProcess | undefined;
  let container: Container | undefined;

  const archiveOf = (id: string) => fs.readFileSync(path.join(dataDir, INCIDENTS_DIR, `${id}.tar.gz`));

  async function start(lines: LogLine[]): Promise<Agent> {
    const config = loadConfig({
      overrides: [
        [['dataDir'], dataDir],
        [['api', 'listen'], [`unix://${dataDir}-run/amber.sock`]],
        [['incident', 'window'], { before: '1m', after: '200ms' }],
        [['incident', 'joinWindow'], 0], // every trigger opens its own incident
        [
          ['incident', 'upload'],
          {
            retry: { initialDelay: '200ms', maxDelay: '1s' },
            sinks: [
              { type: 's3', endpoint: server!.endpoint, bucket: server!.bucket, prefix: PREFIX, accessKeyIdFile: keyIdFile, secretAccessKeyFile: secretFile, forcePathStyle: true },
            ],
          },
        ],
      ],
    });
    const agent = await startAgent(config, recordingLog(lines));
    agents.push(agent);
    return agent;
  }

  /** A trigger by hand on the container (retried until the agent has learned it). */
  async function trigger(agent: Agent, reason: string): Promise<string> {
    return until('the agent to know the container', () =>
      agent.incidents!.trigger({ container: container!.id.slice(0, 12), reason, requestedBy: 'test' }).then(
        (r) => r.id,
        (e: Error) => {
          if (e.message.startsWith('no running container')) return undefined;
          throw e;
        },
      ),
    );
  }

  async function uploadsOf(agent: Agent, id: string, want: (u: IncidentSummary['uploads']) => boolean): Promise<IncidentSummary> {
    return until(`incident ${id}'s upload`, async () => {
      const s = (await agent.incidents!.show(id))?.summary;
      if (s?.state === 'failed') throw new Error(`incident ${id} failed: ${s.error}`);
      return s && want(s.uploads) ? s : undefined;
    });
  }

  /** The object's bytes as s3rver serves them. */
  async function getObject(key: string): Promise<Buffer> {
    const client = new S3Client({ endpoint: server!.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: S3RVER_CREDENTIALS });
    try {
      const out = await client.send(new GetObjectCommand({ Bucket: server!.bucket, Key: key }));
      return Buffer.from(await out.Body!.transformToByteArray());
    } finally {
      client.destroy();
    }
  }

  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-incident-upload-'));
    dataDir = path.join(tmp, 'data');
    keyIdFile = path.join(tmp, 's3-key-id');
    secretFile = path.join(tmp, 's3-secret');
    fs.writeFileSync(keyIdFile, `${S3RVER_CREDENTIALS.accessKeyId}\n`, { mode: 0o600 });
    fs.writeFileSync(secretFile, `${S3RVER_CREDENTIALS.secretAccessKey}\n`, { mode: 0o600 });
    server = await S3rverProcess.start('evidence');
    container = await startContainer(uniqueName('amber-incident-upload'));
  });

  afterAll(async () => {
    for (const a of agents) await a.close();
    await server?.cleanup();
    if (container) await container.remove();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    if (dataDir) fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
  });

  let firstId = '';

  it("a manual trigger's bundle is uploaded: the object is the archive's bytes", async () => {
    const lines: LogLine[] = [];
    const agent = await start(lines);
    firstId = await trigger(agent, 'upload me');
    const s = await uploadsOf(agent, firstId, (u) => u[0]?.state === 'uploaded');
    expect(s).toMatchObject({ id: firstId, state: 'complete', containerId: container!.id, trigger: { kind: 'manual', reason: 'upload me' } });
    expect(s.uploads).toEqual([{ sink: 's3', state: 'uploaded', attempts: 1, lastError: '', remote: `s3://evidence/${PREFIX}${firstId}.tar.gz` }]);
    const archive = archiveOf(firstId);
    expect(s.bytes).toBe(archive.length);
    expect((await getObject(`${PREFIX}${firstId}.tar.gz`)).equals(archive)).toBe(true);
    expect(lines.filter((l) => l.msg === 'uploaded and verified').map((l) => [l.id, l.sink])).toEqual([[firstId, 's3']]);
    await agent.close();
  }, 60_000);

  it('an upload pending when the agent stops completes after a restart on the same data dir', async () => {
    expect(firstId).not.toBe('');
    await server!.stop();
    let id = '';
    let attempts = 0;
    try {
      const agent = await start([]);
      id = await trigger(agent, 'upload me later');
      const s = await uploadsOf(agent, id, (u) => u[0]?.lastError !== '' && u[0]?.lastError !== undefined);
      expect(s.uploads).toMatchObject([{ sink: 's3', state: 'pending' }]);
      expect(s.uploads[0].attempts).toBeGreaterThanOrEqual(1);
      await agent.close();
      // what is owed is on disk
      const saved = JSON.parse(fs.readFileSync(path.join(dataDir, INCIDENTS_DIR, UPLOADS_DIR, `${id}.json`), 'utf8'));
      expect(saved.sinks.s3).toMatchObject({ pending: true, uploadedAt: null, remote: null, failed: false });
      attempts = saved.sinks.s3.attempts as number;
      expect(attempts).toBeGreaterThanOrEqual(1);
    } finally {
      await server!.start();
    }

    const lines: LogLine[] = [];
    const agent = await start(lines);
    expect(lines.filter((l) => l.msg === 'resuming uploads')).toMatchObject([{ bundles: 1 }]);
    const s = await uploadsOf(agent, id, (u) => u[0]?.state === 'uploaded');
    expect(s).toMatchObject({ id, state: 'complete', trigger: { kind: 'manual', reason: 'upload me later' } });
    expect(s.uploads).toEqual([{ sink: 's3', state: 'uploaded', attempts: attempts + 1, lastError: '', remote: `s3://evidence/${PREFIX}${id}.tar.gz` }]);
    expect((await getObject(`${PREFIX}${id}.tar.gz`)).equals(archiveOf(id))).toBe(true);
    // the first one stays uploaded, not sent again
    expect((await agent.incidents!.show(firstId))!.summary.uploads).toEqual([
      { sink: 's3', state: 'uploaded', attempts: 1, lastError: '', remote: `s3://evidence/${PREFIX}${firstId}.tar.gz` },
    ]);
    expect(lines.filter((l) => l.msg === 'uploaded and verified').map((l) => l.id)).toEqual([id]);
  }, 90_000);
});
