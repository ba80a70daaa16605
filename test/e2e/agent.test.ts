/**
 * amber agent as a node runs it: the built CLI against the real kernel, a real
 * container doing known things, then `amber buffer query` on its data dir —
 * live, after a restart, after kill -9, and on a copy.
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AmberEvent } from '../../src/sensor/events';
import { CLI, type RunningAgent, startAgentProcess } from '../helpers/agent';
import { programIdsHeldBy, waitForProgramsGone } from '../helpers/bpf';
import { startContainer, uniqueName, type Container } from '../helpers/podman';

const execFileP = promisify(execFile);

async function query(dataDir: string, ...args: string[]): Promise<AmberEvent[]> {
  const { stdout } = await execFileP(process.execPath, [CLI, 'buffer', 'query', '--data-dir', dataDir, '-o', 'json', ...args], {
    maxBuffer: 256 << 20,
  });
  return stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AmberEvent);
}

/** What the container did, as the buffer must hold it. */
function marked(events: AmberEvent[], marker: string) {
  return {
    execs: events.filter((e) => e.type === 'exec' && e.args.join(' ').includes(marker)),
    opens: events.filter((e) => e.type === 'open' && e.path === `/tmp/${marker}.txt`),
  };
}

async function until<T>(what: string, f: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe('amber agent', () => {
  let container: Container;
  let agent: RunningAgent | undefined;
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-agent-'));

  const containerName = uniqueName('amber-e2e-agent');

  beforeAll(async () => {
    container = await startContainer(containerName);
  });
  afterAll(async () => {
    if (agent && agent.child.exitCode === null) {
      agent.child.kill('SIGKILL');
      await agent.exited;
    }
    await container?.remove();
    fs.rmSync(dataDir, { recursive: true, force: true });
    fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
  });

  it('records a container into the buffer, and amber buffer query finds exactly its events by ID', async () => {
    agent = await startAgentProcess(dataDir);
    await container.exec('/bin/sh', '-c', 'echo one > /tmp/amber-agent-one.txt');
    // live: the agent keeps running; the buffer flushes at least every second
    const found = await until('the container events in the live buffer', async () => {
      const m = marked(await query(dataDir, '--container', container.id.slice(0, 12)), 'amber-agent-one');
      return m.execs.length === 1 && m.opens.length === 1 ? m : undefined;
    });
    expect(found.execs[0]).toMatchObject({ containerId: container.id, filename: '/bin/sh', args: ['/bin/sh', '-c', 'echo one > /tmp/amber-agent-one.txt'] });
    expect(found.opens[0]).toMatchObject({ containerId: container.id, flagNames: ['O_WRONLY', 'O_CREAT', 'O_TRUNC'] });
    // the container filter holds only that container's events
    const all = await query(dataDir, '--container', container.id);
    expect(all.length).toBeGreaterThan(0);
    expect(all.filter((e) => e.containerId !== container.id)).toEqual([]);

    agent.child.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    expect(agent.logs()).toContain('"event":"stopped"');

    // what the agent learned of the container is in the data dir, for offline readers of a copy
    const learned = JSON.parse(fs.readFileSync(path.join(dataDir, 'containers', `${container.id}.json`), 'utf8'));
    expect(learned).toMatchObject({ containerId: container.id, runtime: 'podman', name: containerName, initPid: container.pid });
    expect(fs.statSync(path.join(dataDir, 'containers')).mode & 0o777).toBe(0o700);
  });

  it('keeps events across a restart and a kill -9', async () => {
    agent = await startAgentProcess(dataDir);
    await container.exec('/bin/sh', '-c', 'echo two > /tmp/amber-agent-two.txt');
    await until('the second run\'s events', async () => {
      const m = marked(await query(dataDir, '--container', container.id), 'amber-agent-two');
      return m.execs.length === 1 ? m : undefined;
    });
    const programs = programIdsHeldBy(agent.child.pid!);
    expect(programs.length).toBeGreaterThanOrEqual(8);
    agent.child.kill('SIGKILL');
    await agent.exited;
    // a killed agent leaves nothing attached: its links and programs go with its fds
    expect(await waitForProgramsGone(programs)).toEqual([]);

    // a copy taken from the node's disk answers the same, with no agent running
    const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-agent-copy-'));
    try {
      fs.cpSync(dataDir, copy, { recursive: true });
      const events = await query(copy, '--container', container.id);
      expect(marked(events, 'amber-agent-one').execs).toHaveLength(1);
      expect(marked(events, 'amber-agent-two').execs).toHaveLength(1);
      expect(marked(events, 'amber-agent-two').opens).toHaveLength(1);
    } finally {
      fs.rmSync(copy, { recursive: true, force: true });
    }

    // and the agent starts again on the killed data dir and keeps appending
    agent = await startAgentProcess(dataDir);
    await container.exec('/bin/sh', '-c', 'echo three > /tmp/amber-agent-three.txt');
    const events = await until('the third run\'s events', async () => {
      const e = await query(dataDir, '--container', container.id);
      return marked(e, 'amber-agent-three').execs.length === 1 ? e : undefined;
    });
    for (const marker of ['amber-agent-one', 'amber-agent-two', 'amber-agent-three']) {
      expect(marked(events, marker).execs).toHaveLength(1);
    }
    // in time order
    for (let i = 1; i < events.length; i++) expect(events[i].ts).toBeGreaterThanOrEqual(events[i - 1].ts);
    agent.child.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
  });

  it('stays up when its disk fills, says so once, and writes again when space returns', async () => {
    const mount = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-agent-full-'));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mount]);
    let full: RunningAgent | undefined;
    try {
      const dir = path.join(mount, 'data');
      full = await startAgentProcess(dir, { AMBER_BUFFER_FLUSH_INTERVAL: '200ms' });
      const filler = path.join(mount, 'filler');
      try {
        execFileSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'], { stdio: 'ignore' });
      } catch {
        // dd stops with ENOSPC: that is the point
      }
      await container.exec('/bin/sh', '-c', 'for i in 1 2 3 4 5 6 7 8; do echo x > /tmp/amber-full-$i.txt; done');
      await until('the disk-full report', async () => (full!.logs().includes('disk full') ? true : undefined));
      expect(full.child.exitCode).toBe(null);

      fs.rmSync(filler);
      await container.exec('/bin/sh', '-c', 'echo back > /tmp/amber-full-back.txt');
      await until('writing again', async () => (full!.logs().includes('writing again') ? true : undefined));
      const events = await until('the events after the disk emptied', async () => {
        const e = await query(dir, '--container', container.id, '--match', 'amber-full-back');
        return e.some((x) => x.type === 'open' && x.path === '/tmp/amber-full-back.txt') ? e : undefined;
      });
      expect(events.length).toBeGreaterThan(0);
      expect(full.logs().match(/disk full/g)).toHaveLength(1);
      full.child.kill('SIGTERM');
      expect(await full.exited).toBe(0);
    } finally {
      if (full && full.child.exitCode === null) {
        full.child.kill('SIGKILL');
        await full.exited;
      }
      execFileSync('umount', [mount]);
      fs.rmSync(mount, { recursive: true, force: true });
    }
  });

  it('refuses a config file with a wrong key, naming it', async () => {
    const file = path.join(dataDir, 'bad.yaml');
    fs.writeFileSync(file, 'buffer:\n  maxBytes: 64MiB\n  maxAgee: 1h\n');
    const run = await execFileP(process.execPath, [CLI, 'agent', '--config', file]).catch((e: { code: number; stderr: string }) => e);
    expect(run).toMatchObject({ code: 1 });
    expect((run as { stderr: string }).stderr).toContain(`${file}: unknown key buffer.maxAgee`);
  });
});
