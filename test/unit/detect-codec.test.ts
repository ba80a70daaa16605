/** Findings (drift, alert) are stored by the block codec like any event, and counted under their types. */
import { describe, expect, it } from 'vitest';
import { BlockEncoder, decodeBlockPayload } from '../../src/buffer/block-codec';
import type { AlertEvent, AmberEvent, DriftEvent } from '../../src/sensor/events';
import { CONTAINER_A, openEvent, T0 } from '../helpers/buffer-events';

describe('findings in the buffer', () => {
  it('round-trips a drift and an alert finding exactly and counts them per type', () => {
    const drift: DriftEvent = {
      type: 'drift', ts: T0, pid: 300, tid: 300, ppid: 10, uid: 0, gid: 0, comm: 'x', cgroupId: 4242, containerId: CONTAINER_A,
      mntns: 4026531840, netns: 4026531992, action: 'incident', rules: ['drift'], reason: 'upper-layer', subject: 'executable',
      path: '/tmp/x', change: 'created', file: { size: 1234, mode: 0o100755, mtime: T0 - 5e6, ctime: T0 - 4e6 },
      mtimeSinceStartNs: 3_000_000_123, ctimeSinceStartNs: 3_000_001_123, imageFile: null,
      sha256: 'ab'.repeat(32), hashedBytes: 1234, hashError: '', hashedFrom: 'exe',
      exec: { filename: '/tmp/x', exePath: '/tmp/x', args: ['/tmp/x', '-v'], script: '' },
      ancestry: [{ pid: 300, ppid: 10, comm: 'x', exePath: '/tmp/x', args: ['/tmp/x', '-v'] }, { pid: 10, ppid: 9, comm: 'sh', exePath: '/bin/busybox', args: ['sh'] }],
      container: { runtime: 'podman', name: 'web', image: 'localhost/web:1', imageId: 'sha256:00', startedAt: '2024-05-01T11:59:57.000Z', pod: null },
    };
    const open = openEvent(T0 + 1, { path: '/etc/passwd', flags: 1, flagNames: ['O_WRONLY'] });
    const alert: AlertEvent = {
      type: 'alert', ts: open.ts, pid: open.pid, tid: open.tid, ppid: open.ppid, uid: 0, gid: 0, comm: open.comm, cgroupId: open.cgroupId,
      containerId: open.containerId, mntns: open.mntns, netns: open.netns, action: 'alert', rules: ['write-system-path'], event: open,
      ancestry: [], container: null,
    };
    const events: AmberEvent[] = [open, drift, alert];
    const enc = new BlockEncoder(4096);
    for (const e of events) enc.append(e);
    const { payload, summary } = enc.finish();
    expect(decodeBlockPayload(payload)).toEqual(events);
    expect(summary.typeCounts).toEqual([0, 0, 0, 1, 0, 0, 0, 1, 1]);
  });
});
