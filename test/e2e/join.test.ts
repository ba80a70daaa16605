/**
 * Container metadata joined at read time (never stored per event): a real
 * podman container's exec shows its name, image and runtime in
 * `amber trace --local`, through an agent's API, and in a copy of the agent's
 * data dir queried offline; --image/--pod select by them.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { amber, amberStreaming, type RunningAgent, startAgentProcess, stopAgentProcess } from '../helpers/agent';
import { type Container, startContainer, TEST_IMAGE, uniqueName } from '../helpers/podman';


const lines = (text: string) => text.split('\n').filter(Boolean);
/** The test image's name without registry or tag: a substring of its reference. */
const IMAGE_NAME = 'amber-test-busybox';

describe('container metadata joined to events', () => {
  let container: Container;
  let name: string;
  let agent: RunningAgent | undefined;
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-join-'));
  const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-join-copy-'));

  beforeAll(async () => {
    name = uniqueName('amber-e2e-join');
    container = await startContainer(name);
  });
  afterAll(async () => {
    await stopAgentProcess(agent);
    await container?.remove();
    for (const d of [dataDir, `${dataDir}-run`, copy]) fs.rmSync(d, { recursive: true, force: true });
  });

  /** What every event of the test container shows. */
  const joined = () => ({ runtime: 'podman', container: name, image: TEST_IMAGE, pod: '', namespace: '' });

  it('amber trace exec --local --image shows the exec with its container name, image and runtime', async () => {
    const marker = `amber-join-local-${Date.now()}`;
    const run = await amberStreaming(['trace', 'exec', '--local', '--image', IMAGE_NAME, '-o', 'json', '--timeout', '5s'], async () => {
      await container.exec('/bin/sh', '-c', `echo ${marker} > /dev/null`);
    });
    expect(run.code).toBe(0);
    const mine = lines(run.stdout).filter((l) => l.includes(marker));
    expect(mine).toHaveLength(1);
    const ev = JSON.parse(mine[0]);
    expect(ev).toMatchObject({ type: 'exec', containerId: container.id, ...joined() });
    // the joined fields come last, in withMetadata's order
    expect(Object.keys(ev).slice(-5)).toEqual(['runtime', 'container', 'image', 'pod', 'namespace']);
    // --image selected: every line is a container of the test image
    for (const l of lines(run.stdout)) expect(JSON.parse(l).image).toBe(TEST_IMAGE);
  });

  it('an agent shows the same fields through its API, and a copy of its data dir offline', async () => {
    agent = await startAgentProcess(dataDir);
    const marker = `amber-join-agent-${Date.now()}`;
    const remote = await amberStreaming(['trace', 'exec', '--server', agent.server, '--image', IMAGE_NAME, '-o', 'json', '--timeout', '5s'], async () => {
      await new Promise((r) => setTimeout(r, 1000)); // the agent learns the running container at start
      await container.exec('/bin/sh', '-c', `echo ${marker} > /dev/null`);
    });
    expect(remote.code).toBe(0);
    const live = lines(remote.stdout).filter((l) => l.includes(marker));
    expect(live).toHaveLength(1);
    expect(JSON.parse(live[0])).toMatchObject({ type: 'exec', containerId: container.id, ...joined() });

    // the buffer's events reach disk on the agent's stop; its containers/ files go with them
    await stopAgentProcess(agent, 'SIGTERM');
    agent = undefined;
    fs.cpSync(dataDir, copy, { recursive: true });
    const offline = await amber('buffer', 'query', '--data-dir', copy, '--type', 'exec', '--image', IMAGE_NAME, '--match', marker, '-o', 'json');
    expect(offline.code).toBe(0);
    expect(offline.stderr).toBe('');
    expect(lines(offline.stdout)).toEqual(live); // the same bytes, ts included: the same agent's event
    // not a pod: --pod selects nothing; a wrong image neither
    const noPod = await amber('buffer', 'query', '--data-dir', copy, '--type', 'exec', '--pod', name, '--match', marker, '-o', 'json');
    expect(noPod).toMatchObject({ code: 0, stdout: '' });
    const otherImage = await amber('buffer', 'query', '--data-dir', copy, '--type', 'exec', '--image', 'no-such-image', '--match', marker, '-o', 'json');
    expect(otherImage).toMatchObject({ code: 0, stdout: '' });
    // a bad metadata file is reported and the good ones still used
    fs.writeFileSync(path.join(copy, 'containers', `${'f'.repeat(64)}.json`), '{"not":"metadata"}');
    const withBad = await amber('buffer', 'query', '--data-dir', copy, '--type', 'exec', '--containers-only', '--match', marker, '-o', 'json');
    expect(lines(withBad.stdout)).toEqual(live);
    expect(withBad.stderr).toContain(`container metadata skipped: ${path.join(copy, 'containers', `${'f'.repeat(64)}.json`)}: not container metadata`);
  });
});
