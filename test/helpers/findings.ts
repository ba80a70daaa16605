/** A drift and an alert finding as the detector builds them (its key order), for codec tests. */
import type { AlertEvent, DriftEvent, OpenEvent } from '../../src/sensor/events';
import { CONTAINER_A, openEvent, T0 } from './buffer-events';

export const DRIFT: DriftEvent = {
  type: 'drift', ts: T0, pid: 300, tid: 300, ppid: 10, uid: 0, gid: 0, comm: 'x', cgroupId: 4242, containerId: CONTAINER_A,
  mntns: 4026531840, netns: 4026531992, action: 'incident', rules: ['drift'], reason: 'upper-layer', subject: 'executable',
  path: '/tmp/x', change: 'created', file: { size: 1234, mode: 0o100755, mtime: T0 - 5e6, ctime: T0 - 4e6 },
  mtimeSinceStartNs: 3_000_000_123, ctimeSinceStartNs: 3_000_001_123, imageFile: null,
  sha256: 'ab'.repeat(32), hashedBytes: 1234, hashError: '', hashedFrom: 'exe',
  exec: { filename: '/tmp/x', exePath: '/tmp/x', args: ['/tmp/x', '-v'], script: '' },
  ancestry: [{ pid: 300, ppid: 10, comm: 'x', exePath: '/tmp/x', args: ['/tmp/x', '-v'] }, { pid: 10, ppid: 9, comm: 'sh', exePath: '/bin/busybox', args: ['sh'] }],
  containerMetadata: { runtime: 'podman', name: 'web', image: 'localhost/web:1', imageId: 'sha256:00', startedAt: '2024-05-01T11:59:57.000Z', pod: null },
};

/** In the decoder's key order (type first), as an alert carries it. */
export const ALERT_OPEN: OpenEvent = { type: 'open', ...openEvent(T0 + 1, { path: '/etc/passwd', flags: 1, flagNames: ['O_WRONLY'] }) };

export const ALERT: AlertEvent = {
  type: 'alert', ts: ALERT_OPEN.ts, pid: ALERT_OPEN.pid, tid: ALERT_OPEN.tid, ppid: ALERT_OPEN.ppid, uid: 0, gid: 0, comm: ALERT_OPEN.comm,
  cgroupId: ALERT_OPEN.cgroupId, containerId: ALERT_OPEN.containerId, mntns: ALERT_OPEN.mntns, netns: ALERT_OPEN.netns, action: 'alert',
  rules: ['write-system-path'], event: ALERT_OPEN, ancestry: [], containerMetadata: null,
};
