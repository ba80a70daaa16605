/**
 * `amber incidents` against a real agent process on a real podman container:
 * a trigger waited for, the incident as list and show print it, its archive
 * pulled byte for byte and verified with the key `amber status` printed; the
 * errors each say what went wrong with the right exit code; an agent with
 * incidents off says so. Needs root (the agent loads BPF).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatBytes } from '../../src/cli/buffer';
import { INCIDENTS_DIR, type Manifest } from '../../src/incident/manifest';
import { amber, startAgentProcess, stopAgentProcess, type RunningAgent } from '../helpers/agent';
import { podman, startContainer, TEST_IMAGE, uniqueName, type Container } from '../helpers/podman';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('amber incidents (agent process, podman)', { timeout: 180_000 }, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-incidents-api-'));
  const dataDir = path.join(tmp, 'data');
  const name = uniqueName('amber-incidents-api');
  let agent: RunningAgent | undefined;
  let container: Container | undefined;
  let server: string;
  let id = '';

  const cli = (...args: string[]) => amber('incidents', ...args, '--server', server);
  const archiveOnAgent = () => path.join(dataDir, INCIDENTS_DIR, `${id}.tar.gz`);
  const manifestOnAgent = () => JSON.parse(fs.readFileSync(path.join(dataDir, INCIDENTS_DIR, id, 'manifest.json'), 'utf8')) as Manifest;

  beforeAll(async () => {
    // the container first: the agent learns it as it starts
    container = await startContainer(name);
    agent = await startAgentProcess(dataDir, { AMBER_INCIDENT_WINDOW_BEFORE: '5s', AMBER_INCIDENT_WINDOW_AFTER: '1s' });
    server = agent.server;
  }, 120_000);

  afterAll(async () => {
    await stopAgentProcess(agent, 'SIGTERM');
    if (container) await podman('rm', '-f', '-t', '0', container.id).catch((e) => console.error(e));
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
  }, 60_000);

  it('trigger --wait prints the ID and the complete incident', async () => {
    const r = await cli('trigger', '--container', container!.id.slice(0, 12), '--reason', 'api e2e', '--wait', '2m');
    expect(r.stderr).not.toContain('FAILED');
    expect(r.code).toBe(0);
    const lines = r.stdout.split('\n');
    id = lines[0];
    expect(id).toMatch(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/);
    const size = fs.statSync(archiveOnAgent()).size;
    const m = manifestOnAgent();
    expect(lines.slice(1, 8)).toEqual([
      `Incident ${id}`,
      '  state      complete',
      `  created    ${m.createdAt}`,
      '  trigger    manual: api e2e (requested by unix)',
      `  container  ${container!.id.slice(0, 12)}  name ${name}  image ${TEST_IMAGE}`,
      `  archive    ${id}.tar.gz, ${size} bytes (${formatBytes(size)})`,
      '',
    ]);
    // the API's peer is who asked: the unix socket
    expect(m.trigger).toMatchObject({ kind: 'manual', reason: 'api e2e', requestedBy: 'unix' });
    expect(m.container?.id).toBe(container!.id);
  });

  it('list prints it, in columns and as JSON', async () => {
    const size = fs.statSync(archiveOnAgent()).size;
    const m = manifestOnAgent();
    const r = await cli('list');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    // the agent sees every container of the node: other tests' drift may open incidents too; ours is the one with its ID
    const rows = r.stdout.trimEnd().split('\n').map((l) => l.split(/ {2,}/));
    expect(rows[0]).toEqual(['ID', 'STATE', 'CREATED', 'TRIGGER', 'CONTAINER', 'POD', 'SIZE', 'UPLOADS']);
    expect(rows.filter((row) => row[0] === id)).toEqual([[id, 'complete', m.createdAt, 'manual', name, '-', formatBytes(size), '-']]);
    const json = await cli('list', '-o', 'json');
    expect(json.code).toBe(0);
    expect(json.stdout.trimEnd().split('\n').map((l) => JSON.parse(l)).filter((s) => s.id === id)).toEqual([
      {
        id,
        state: 'complete',
        createdAt: m.createdAt,
        trigger: { kind: 'manual', reason: 'api e2e', requestedBy: 'unix' },
        containerId: container!.id,
        pod: '',
        container: name,
        image: TEST_IMAGE,
        joined: 0,
        bytes: size,
        error: '',
        uploads: [],
        responses: [],
      },
    ]);
  });

  it('show prints the artifacts of the manifest; -o json carries the manifest the agent signed', async () => {
    const m = manifestOnAgent();
    const r = await cli('show', id);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const total = m.artifacts.reduce((n, a) => n + a.size, 0);
    const at = r.stdout.indexOf('\nArtifacts (');
    const table = r.stdout.slice(at + 1).trimEnd().split('\n');
    expect(table[0]).toBe(`Artifacts (${m.artifacts.length}, ${total} bytes); manifest signed`);
    expect(table[1].split(/ +/)).toEqual(['', 'PATH', 'KIND', 'PID', 'SIZE', 'SHA256']);
    expect(table.length).toBe(2 + m.artifacts.length);
    // each artifact: path, kind, pid (when it has one), size, the first 16 hex digits of its sha256
    expect(table.slice(2).map((l) => l.trim().split(/ +/))).toEqual(
      m.artifacts.map((a) => [a.path, a.kind, ...(a.pid === undefined ? [] : [String(a.pid)]), String(a.size), a.sha256.slice(0, 16)]),
    );
    expect(m.artifacts.map((a) => a.kind)).toEqual(expect.arrayContaining(['events', 'memory', 'maps', 'container', 'exposure', 'log']));
    const json = await cli('show', id, '-o', 'json');
    expect(json.code).toBe(0);
    const shown = JSON.parse(json.stdout) as { id: string; manifest: Manifest };
    expect(shown.id).toBe(id);
    expect(shown.manifest).toEqual(m);
  });

  it('pull writes the archive the agent holds, which verify accepts with the key status printed', async () => {
    const out = path.join(tmp, 'pulled');
    fs.mkdirSync(out);
    const r = await cli('pull', id, '--out', out);
    const file = path.join(out, `${id}.tar.gz`);
    const agentBytes = fs.readFileSync(archiveOnAgent());
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${file}\n`);
    // not a terminal: no bar, one plain line
    expect(r.stderr).toMatch(new RegExp(`^amber: pulled incident ${id}: ${agentBytes.length} bytes \\(.+\\) in \\d+\\.\\ds, sha256 ${sha256(agentBytes)} matches\\n$`));
    expect(sha256(fs.readFileSync(file))).toBe(sha256(agentBytes));
    expect(fs.readdirSync(out)).toEqual([`${id}.tar.gz`]);

    // the key as `amber status` prints it, saved as the file verify takes
    const status = await amber('status', '--server', server);
    expect(status.code).toBe(0);
    const pem = /-----BEGIN PUBLIC KEY-----\n[\s\S]*?\n-----END PUBLIC KEY-----\n/.exec(status.stdout)?.[0];
    expect(pem).toBe(fs.readFileSync(path.join(dataDir, 'keys', 'signing-key.pub.pem'), 'utf8'));
    const keyFile = path.join(tmp, 'key.pem');
    fs.writeFileSync(keyFile, pem!);
    const verify = await amber('verify', file, '--key', keyFile);
    expect(verify.stderr).toBe('');
    expect(verify.stdout.trimEnd().split('\n').at(-1)).toBe(`verified: ${manifestOnAgent().artifacts.length} artifacts and the signature match the manifest`);
    expect(verify.code).toBe(0);

    // never over an existing file, and nothing left behind
    const again = await cli('pull', id, '--out', out);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(`amber: ${file} already exists; not overwriting it\n`);
    expect(fs.readdirSync(out)).toEqual([`${id}.tar.gz`]);
    expect(sha256(fs.readFileSync(file))).toBe(sha256(agentBytes));

    // --progress draws the bar even into a pipe, ending at 100%
    const out2 = path.join(tmp, 'pulled-progress');
    fs.mkdirSync(out2);
    const bar = await cli('pull', id, '--out', out2, '--progress');
    expect(bar.code).toBe(0);
    expect(bar.stderr).toContain(`\r${id} [${'#'.repeat(30)}] 100%  ${formatBytes(agentBytes.length)} / ${formatBytes(agentBytes.length)}  `);
    expect(sha256(fs.readFileSync(path.join(out2, `${id}.tar.gz`)))).toBe(sha256(agentBytes));
  });

  it('release answers what it lifted (nothing here); unknown incidents are NOT_FOUND', async () => {
    const r = await cli('release', id);
    expect(r).toEqual({ code: 0, stdout: `incident ${id} had no responses in force\n`, stderr: '' });
    for (const sub of ['release', 'show']) {
      const unknown = await cli(sub, 'no-such-incident');
      expect(unknown).toEqual({ code: 1, stdout: '', stderr: 'amber: NOT_FOUND: no incident no-such-incident\n' });
    }
    const out = path.join(tmp, 'pulled-unknown');
    fs.mkdirSync(out);
    const pull = await cli('pull', 'no-such-incident', '--out', out);
    expect(pull).toEqual({ code: 1, stdout: '', stderr: 'amber: NOT_FOUND: no incident no-such-incident\n' });
    expect(fs.readdirSync(out)).toEqual([]);
  });

  it('trigger errors: unknown container, bad fields, two targets', async () => {
    expect(await cli('trigger', '--container', '0123456789ab0123')).toEqual({
      code: 1,
      stdout: '',
      stderr: 'amber: NOT_FOUND: no running container 0123456789ab0123 on this node\n',
    });
    expect(await cli('trigger', '--container', container!.id.slice(0, 12), '--reason', 'x'.repeat(1025))).toEqual({
      code: 1,
      stdout: '',
      stderr: 'amber: INVALID_ARGUMENT: reason is at most 1024 bytes (it is 1025)\n',
    });
    expect(await cli('trigger', '--container', 'web')).toEqual({
      code: 1,
      stdout: '',
      stderr: 'amber: INVALID_ARGUMENT: container must be a container ID: 12 to 64 lowercase hex digits (a unique prefix will do)\n',
    });
    expect(await cli('trigger', '--pod', 'default/a/b')).toMatchObject({ code: 2, stderr: 'amber: --pod must be NAMESPACE/NAME, got "default/a/b"\n' });
    const two = await cli('trigger', '--container', container!.id, '--pid', '1');
    expect(two.code).toBe(2);
    expect(two.stderr.split('\n')[0]).toBe('amber: --container and --pid exclude each other: give exactly one of --container, --pod, --pid');
    // none of these opened an incident (other tests' containers may have)
    const list = await cli('list', '-o', 'json');
    const ours = list.stdout.trimEnd().split('\n').map((l) => JSON.parse(l) as { id: string; containerId: string; trigger: { kind: string } });
    expect(ours.filter((s) => s.trigger.kind === 'manual' || s.containerId === container!.id).map((s) => s.id)).toEqual([id]);
  });

  it('an agent with incidents off answers UNAVAILABLE and publishes no key', async () => {
    await stopAgentProcess(agent, 'SIGTERM');
    agent = await startAgentProcess(path.join(tmp, 'data-off'), { AMBER_INCIDENT_ENABLED: 'false' });
    server = agent.server;
    expect(await cli('list')).toEqual({ code: 1, stdout: '', stderr: 'amber: UNAVAILABLE: incidents are off on this agent\n' });
    expect(await cli('trigger', '--container', container!.id)).toEqual({ code: 1, stdout: '', stderr: 'amber: UNAVAILABLE: incidents are off on this agent\n' });
    const status = await amber('status', '--server', server);
    expect(status.code).toBe(0);
    expect(status.stdout).not.toContain('signing key');
    await stopAgentProcess(agent, 'SIGTERM');
    fs.rmSync(`${path.join(tmp, 'data-off')}-run`, { recursive: true, force: true });
  });
});
