/**
 * The detector as a pipeline subscriber (real Pipeline, the default rules):
 * alerts reach the pipeline with the event, ancestry and container; alerts
 * are throttled per rule, incidents never; the process table stays bounded
 * and stops ancestry at the container's boundary.
 */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { ContainerMetadata } from '../../src/containers/metadata';
import { startDetector } from '../../src/detect/detector';
import { ProcessTable } from '../../src/detect/process-table';
import { compileRules, loadRules } from '../../src/detect/rules';
import { Pipeline } from '../../src/pipeline/pipeline';
import type { AlertEvent, AmberEvent } from '../../src/sensor/events';
import { CONTAINER_A, execEvent, exitEvent, forkEvent, openEvent, T0 } from '../helpers/buffer-events';

const NO_PROC = '/nonexistent-proc';
const md: ContainerMetadata = {
  containerId: CONTAINER_A, runtime: 'podman', name: 'web-1', image: 'localhost/shop:2', imageId: 'sha256:abc',
  startedAt: '2024-05-01T11:00:00.000Z', initPid: 10, overlay: null, pod: { name: 'shop', namespace: 'prod', uid: 'u1', labels: { app: 'shop' } },
  removedAt: '', errors: [],
};
const metadata = { get: (id: string) => (id === CONTAINER_A ? md : undefined), lookup: async (id: string) => (id === CONTAINER_A ? md : undefined) };

async function turn(): Promise<void> {
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
}

describe('detector', () => {
  it('publishes an alert into the pipeline with the event, its ancestry and container', async () => {
    const pipeline = new Pipeline();
    const seen: AmberEvent[] = [];
    pipeline.addSink((b) => seen.push(...b));
    const d = startDetector({ pipeline, metadata, rules: loadRules(path.join(__dirname, '../../rules/default.yaml')), procRoot: NO_PROC });
    const events: AmberEvent[] = [
      execEvent(T0, { pid: 10, ppid: 5, comm: 'nginx', exePath: '/usr/sbin/nginx', args: ['nginx'] }),
      forkEvent(T0 + 1, { pid: 10, ppid: 5, comm: 'nginx', childPid: 11 }),
      execEvent(T0 + 2, { pid: 11, ppid: 10, comm: 'sh', exePath: '/bin/busybox', filename: '/bin/sh', args: ['sh', '-c', 'id'] }),
    ];
    pipeline.publish(events);
    await turn();
    const alerts = seen.filter((e): e is AlertEvent => e.type === 'alert');
    expect(alerts).toEqual([
      {
        type: 'alert', ts: T0 + 2, pid: 11, tid: 100, ppid: 10, uid: 0, gid: 0, comm: 'sh', cgroupId: 4242, containerId: CONTAINER_A,
        mntns: 4026531840, netns: 4026531992, action: 'alert', rules: ['shell-from-server'], event: events[2],
        ancestry: [
          { pid: 11, ppid: 10, comm: 'sh', exePath: '/bin/busybox', args: ['sh', '-c', 'id'] },
          { pid: 10, ppid: 5, comm: 'nginx', exePath: '/usr/sbin/nginx', args: ['nginx'] }, // the container's init: the end
        ],
        containerMetadata: { runtime: 'podman', name: 'web-1', image: 'localhost/shop:2', imageId: 'sha256:abc', startedAt: md.startedAt, pod: md.pod },
      },
    ]);
    expect(d.stats()).toMatchObject({ alerts: 1, drift: 0, alertsThrottled: 0 });
    d.close();
  });

  it('throttles alerts per rule per second, never incidents', () => {
    const pipeline = new Pipeline();
    const seen: AmberEvent[] = [];
    pipeline.addSink((b) => seen.push(...b));
    const rules = compileRules(
      `version: 1
rules:
  - { name: w, action: alert, match: { type: open, open: { write: true } } }
  - { name: shadow, action: incident, match: { type: open, path: /etc/shadow } }
`,
      'inline.yaml',
    );
    const d = startDetector({ pipeline, rules, procRoot: NO_PROC, maxAlertsPerRulePerSecond: 5 });
    const writes = Array.from({ length: 20 }, (_, i) => openEvent(T0 + i, { path: `/tmp/f${i}`, flags: 1, flagNames: ['O_WRONLY'] }));
    const shadow = Array.from({ length: 8 }, (_, i) => openEvent(T0 + i, { path: '/etc/shadow' }));
    d.process([...writes, ...shadow]);
    const alerts = seen.filter((e): e is AlertEvent => e.type === 'alert');
    // within one second (the test runs well inside one; a boundary crossing would allow 5 more)
    expect(alerts.filter((a) => a.action === 'alert').length).toBeGreaterThanOrEqual(5);
    expect(alerts.filter((a) => a.action === 'alert').length).toBeLessThanOrEqual(10);
    expect(alerts.filter((a) => a.action === 'incident')).toHaveLength(8);
    expect(d.stats().alertsThrottled).toBe(20 - alerts.filter((a) => a.action === 'alert').length);
    d.close();
  });
});

describe('process table', () => {
  it('forgets the oldest beyond its bound, forgets exits, and stops ancestry at another container', () => {
    const t = new ProcessTable(3, NO_PROC);
    for (let pid = 1; pid <= 4; pid++) t.observe(execEvent(T0, { pid, ppid: pid - 1 }));
    expect([1, 2, 3, 4].map((p) => t.get(p)?.pid)).toEqual([undefined, 2, 3, 4]);
    t.observe(exitEvent(T0, { pid: 3 }));
    expect(t.get(3)).toBeUndefined();
    expect(t.size).toBe(2);

    const u = new ProcessTable(100, NO_PROC);
    u.observe(execEvent(T0, { pid: 20, ppid: 1, comm: 'conmon', containerId: '' , mntns: 1 }));
    u.observe(execEvent(T0, { pid: 21, ppid: 20, comm: 'sh', mntns: 2 }));
    u.observe(forkEvent(T0, { pid: 21, comm: 'sh', childPid: 22, mntns: 2 }));
    u.observe(execEvent(T0, { pid: 22, ppid: 21, comm: 'x', exePath: '/tmp/x', args: ['/tmp/x'], mntns: 2 }));
    expect(u.ancestry(22, CONTAINER_A, 0, 2).map((p) => p.comm)).toEqual(['x', 'sh']); // conmon: another mount namespace
    expect(u.ancestry(22, CONTAINER_A, 21, 2).map((p) => p.pid)).toEqual([22, 21]);
  });
});
