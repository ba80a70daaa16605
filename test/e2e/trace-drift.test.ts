/**
 * `amber trace drift`, locally and through a running agent's API, and the
 * findings in the agent's buffer: a busybox copy dropped into /tmp and run in
 * a real podman container, shown with its container metadata, ancestry and
 * hash. The agent refuses to start on an invalid rule file. Needs root.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { amber, amberStreaming, startAgentProcess, stopAgentProcess, type RunningAgent } from '../helpers/agent';
import { startContainer, TEST_IMAGE, uniqueName, type Container } from '../helpers/podman';

const BUSYBOX = fs.readFileSync('/bin/busybox');
const BUSYBOX_SHA = createHash('sha256').update(BUSYBOX).digest('hex');
const lines = (text: string) => text.split('\n').filter(Boolean);

describe('amber trace drift (agent and --local, podman)', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-trace-drift-'));
  const dataDir = path.join(tmp, 'data');
  const name = uniqueName('amber-trace-drift');
  let container: Container;
  let agent: RunningAgent | undefined;

  beforeAll(async () => {
    container = await startContainer(name);
    agent = await startAgentProcess(dataDir);
  }, 120_000);

  afterAll(async () => {
    await stopAgentProcess(agent);
    await container?.remove();
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
  });

  /** The one drift line of `text` for the dropped file, parsed. */
  function driftOf(text: string, file: string): Record<string, unknown> {
    const found = lines(text).map((l) => JSON.parse(l)).filter((e) => e.type === 'drift' && e.path === file);
    if (found.length !== 1) throw new Error(`expected one drift finding for ${file}, got ${found.length}:\n${text}`);
    return found[0];
  }

  it('shows the finding live from --local and from the agent, the same fields, and the agent keeps it in its buffer', async () => {
    // busybox runs the applet its file is named after; it sleeps, so it is still there to be hashed through /proc/<pid>/exe
    const file = `/tmp/d${Date.now()}/sleep`;
    const until = (out: () => string) => async () => {
      const deadline = Date.now() + 20_000;
      while (!out().includes(`"path":"${file}"`)) {
        if (Date.now() > deadline) throw new Error(`no drift line for ${file}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    let remote: Awaited<ReturnType<typeof amberStreaming>> | undefined;
    const local = await amberStreaming(['trace', 'drift', '--local', '-o', 'json', '--container', container.id], async (localChild, localOut) => {
      remote = await amberStreaming(['trace', 'drift', '--server', agent!.server, '-o', 'json', '--image', 'localhost/amber-test-busybox'], async (remoteChild, remoteOut) => {
        await container.exec('/bin/sh', '-c', `mkdir ${path.dirname(file)} && cp /bin/busybox ${file} && ${file} 2; true`);
        await until(remoteOut)();
        await until(localOut)();
        remoteChild.kill('SIGINT');
      });
      localChild.kill('SIGINT');
    });
    expect(local.code).toBe(0);
    expect(remote!.code).toBe(0);
    const viaApi = driftOf(remote!.stdout, file);
    const viaLocal = driftOf(local.stdout, file);
    expect(viaApi).toMatchObject({
      type: 'drift',
      containerId: container.id,
      comm: 'sleep',
      action: 'incident',
      rules: ['drift'],
      reason: 'upper-layer',
      subject: 'executable',
      change: 'created',
      imageFile: null,
      sha256: BUSYBOX_SHA,
      hashedBytes: BUSYBOX.length,
      hashError: '',
      hashedFrom: 'exe',
      exec: { filename: file, exePath: file, args: [file, '2'] },
      containerMetadata: { runtime: 'podman', name, image: TEST_IMAGE, pod: null },
      container: name,
      // the joined fields of every event
      runtime: 'podman',
      image: TEST_IMAGE,
    });
    // ancestry: the dropped binary, then the sh that ran it (podman exec's), up to the container
    const ancestry = viaApi.ancestry as Array<{ comm: string; exePath: string; args: string[] }>;
    expect(ancestry).toHaveLength(2); // sh's parent is podman's runc, outside the container
    expect(ancestry[0]).toMatchObject({ comm: 'sleep', exePath: file, args: [file, '2'] });
    expect(ancestry[1]).toMatchObject({ comm: 'sh', exePath: '/bin/busybox', args: ['/bin/sh', '-c', `mkdir ${path.dirname(file)} && cp /bin/busybox ${file} && ${file} 2; true`] });
    // the same process and finding seen by two sensors: all but the agent-local timing fields agree
    // (a container's start comes from /proc/uptime, read by each at its own moment: to one 10 ms clock tick)
    const startMs = (d: Record<string, unknown>) => Date.parse((d.containerMetadata as { startedAt: string }).startedAt);
    expect(Math.abs(startMs(viaLocal) - startMs(viaApi))).toBeLessThanOrEqual(10);
    // ns since the epoch are doubles: exact to 256 ns
    const shift = (viaLocal.mtimeSinceStartNs as number) - (viaApi.mtimeSinceStartNs as number);
    expect(Math.abs(shift - (startMs(viaApi) - startMs(viaLocal)) * 1e6)).toBeLessThanOrEqual(512);
    const stable = (d: Record<string, unknown>) => ({
      ...d,
      ts: 0,
      mntns: 0,
      mtimeSinceStartNs: 0,
      ctimeSinceStartNs: 0,
      containerMetadata: { ...(d.containerMetadata as object), startedAt: '' },
    });
    expect(stable(viaLocal)).toEqual(stable(viaApi));

    // the finding went to the agent's buffer too, and comes back through Query
    const query = await amber('buffer', 'query', '--server', agent!.server, '--type', 'drift', '--container', container.id, '-o', 'json');
    expect(query.code).toBe(0);
    expect(driftOf(query.stdout, file)).toEqual(viaApi);
    // and in the default table, one line with the finding's reason, file and hash
    const table = await amber('buffer', 'query', '--server', agent!.server, '--type', 'drift', '--container', container.id);
    const row = lines(table.stdout).filter((l) => l.includes(file));
    expect(row).toHaveLength(1);
    expect(row[0]).toContain('upper-layer');
    expect(row[0]).toContain(BUSYBOX_SHA.slice(0, 12));
  }, 90_000);

  it('an invalid rule file fails the agent start, naming the file, rule and field', async () => {
    const rules = path.join(tmp, 'bad-rules.yaml');
    fs.writeFileSync(rules, 'version: 1\nrules:\n  - { name: typo, action: alert, match: { type: exek } }\n');
    const run = await amber('agent', '--data-dir', path.join(tmp, 'bad-data'), '--config', writeConfig(rules));
    expect(run.code).not.toBe(0);
    expect(run.stderr).toMatch(new RegExp(`^amber: ${rules.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: rule "typo": match\\.type: `));
    expect(fs.existsSync(path.join(tmp, 'bad-data'))).toBe(false); // refused before anything started
  });

  function writeConfig(rules: string): string {
    const file = path.join(tmp, 'config.yaml');
    fs.writeFileSync(file, `detect:\n  rules: ${rules}\napi:\n  listen: [unix://${tmp}/bad.sock]\n`);
    return file;
  }
});
