/** Findings in columns output: what was found, on which file, by which rule, escaped like every cell. */
import { describe, expect, it } from 'vitest';
import { eventFormatter } from '../../src/cli/format';
import type { AlertEvent, DriftEvent } from '../../src/sensor/events';
import { openEvent, T0 } from '../helpers/buffer-events';

const common = { ts: T0, pid: 19403, tid: 19403, ppid: 19397, uid: 0, gid: 0, comm: 'x', cgroupId: 4756, containerId: '', mntns: 1, netns: 2 };

describe('columns output of findings', () => {
  const details = eventFormatter('columns', ['type', 'details']);

  it('shows a drift finding: action, reason, subject, path, change, hash and rules', () => {
    const drift = {
      ...common,
      type: 'drift',
      action: 'incident',
      rules: ['drift'],
      reason: 'upper-layer',
      subject: 'executable',
      path: '/tmp/x\u202e',
      change: 'created',
      sha256: '3d9f2889d6782537624a4e1a10e68a2ddd53e0ee8bac02676f27308f42ec6bf6',
      hashError: '',
    } as unknown as DriftEvent;
    expect(details(drift)).toBe('drift    incident upper-layer executable /tmp/x\\u202e (created)  sha256 3d9f2889d6782537…  rules drift');
    expect(details({ ...drift, sha256: '', hashError: 'exited before hashing' } as DriftEvent)).toBe(
      'drift    incident upper-layer executable /tmp/x\\u202e (created)  [exited before hashing]  rules drift',
    );
  });

  it('shows an alert with the event that raised it', () => {
    const alert = { ...common, type: 'alert', action: 'alert', rules: ['write-system-path'], event: openEvent(T0, { path: '/etc/passwd', flagNames: ['O_WRONLY'], ret: 3 }) } as unknown as AlertEvent;
    expect(details(alert)).toBe('alert    alert rules write-system-path: open /etc/passwd  O_WRONLY  fd 3');
  });
});
