import { describe, expect, it } from 'vitest';
import { matchCgroupPath, parseCgroupPath, parseProcCgroup } from '../../src/containers/cgroup-path';

const ID = '3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708';
const INNER = 'aa'.repeat(32);
const UID = '0b4f3d2e-1c5a-4b6d-8e7f-9a0b1c2d3e4f';
const UID_SYSTEMD = UID.replace(/-/g, '_');
const STATIC_POD_UID = 'c1a2b3d4e5f60718293a4b5c6d7e8f90';

describe('parseCgroupPath', () => {
  const positives: Array<[string, string, ReturnType<typeof parseCgroupPath>]> = [
    ['podman cgroupfs', `/libpod_parent/libpod-${ID}`, { containerId: ID, runtime: 'podman', podUid: '' }],
    ['podman systemd scope', `/machine.slice/libpod-${ID}.scope`, { containerId: ID, runtime: 'podman', podUid: '' }],
    [
      'podman rootless',
      `/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-${ID}.scope`,
      { containerId: ID, runtime: 'podman', podUid: '' },
    ],
    [
      'podman sub-cgroup of the container',
      `/machine.slice/libpod-${ID}.scope/container`,
      { containerId: ID, runtime: 'podman', podUid: '' },
    ],
    ['containerd systemd scope', `/system.slice/cri-containerd-${ID}.scope`, { containerId: ID, runtime: 'containerd', podUid: '' }],
    ['containerd k8s.io namespace', `/k8s.io/${ID}`, { containerId: ID, runtime: 'containerd', podUid: '' }],
    ['containerd default namespace', `/default/${ID}`, { containerId: ID, runtime: 'containerd', podUid: '' }],
    ['containerd other namespace', `/buildkit/${ID}`, { containerId: ID, runtime: 'containerd', podUid: '' }],
    ['cri-o systemd scope', `/machine.slice/crio-${ID}.scope`, { containerId: ID, runtime: 'cri-o', podUid: '' }],
    ['docker systemd scope', `/system.slice/docker-${ID}.scope`, { containerId: ID, runtime: 'docker', podUid: '' }],
    ['docker cgroupfs', `/docker/${ID}`, { containerId: ID, runtime: 'docker', podUid: '' }],
    [
      'container with its own init.scope inside',
      `/system.slice/docker-${ID}.scope/init.scope`,
      { containerId: ID, runtime: 'docker', podUid: '' },
    ],
    [
      'kubepods cgroupfs burstable',
      `/kubepods/burstable/pod${UID}/${ID}`,
      { containerId: ID, runtime: 'unknown', podUid: UID },
    ],
    ['kubepods cgroupfs guaranteed', `/kubepods/pod${UID}/${ID}`, { containerId: ID, runtime: 'unknown', podUid: UID }],
    [
      'kubepods cgroupfs besteffort, cri-o',
      `/kubepods/besteffort/pod${UID}/crio-${ID}`,
      { containerId: ID, runtime: 'cri-o', podUid: UID },
    ],
    [
      'kubepods systemd containerd',
      `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_SYSTEMD}.slice/cri-containerd-${ID}.scope`,
      { containerId: ID, runtime: 'containerd', podUid: UID },
    ],
    [
      'kubepods systemd guaranteed docker',
      `/kubepods.slice/kubepods-pod${UID_SYSTEMD}.slice/docker-${ID}.scope`,
      { containerId: ID, runtime: 'docker', podUid: UID },
    ],
    [
      'kubepods systemd besteffort cri-o',
      `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID_SYSTEMD}.slice/crio-${ID}.scope`,
      { containerId: ID, runtime: 'cri-o', podUid: UID },
    ],
    [
      'static pod (32-hex uid)',
      `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${STATIC_POD_UID}.slice/cri-containerd-${ID}.scope`,
      { containerId: ID, runtime: 'containerd', podUid: STATIC_POD_UID },
    ],
    ['nested: docker in docker, deepest wins', `/docker/${ID}/docker/${INNER}`, { containerId: INNER, runtime: 'docker', podUid: '' }],
    [
      'nested: podman in a pod container, deepest wins',
      `/kubepods/burstable/pod${UID}/${ID}/libpod_parent/libpod-${INNER}`,
      { containerId: INNER, runtime: 'podman', podUid: UID },
    ],
    ['trailing slash', `/docker/${ID}/`, { containerId: ID, runtime: 'docker', podUid: '' }],
  ];
  it.each(positives)('%s', (_name, path, expected) => {
    expect(parseCgroupPath(path)).toEqual(expected);
  });

  const negatives: Array<[string, string]> = [
    ['root', '/'],
    ['empty', ''],
    ['podman conmon', `/libpod_parent/libpod-conmon-${ID}`],
    ['podman conmon scope', `/machine.slice/libpod-conmon-${ID}.scope`],
    ['cri-o conmon', `/machine.slice/crio-conmon-${ID}.scope`],
    ['init.scope', '/init.scope'],
    ['user.slice', '/user.slice/user-1000.slice/session-3.scope'],
    ['system service', '/system.slice/containerd.service'],
    ['kubepods pod without container', `/kubepods/burstable/pod${UID}`],
    ['kubepods systemd pod slice', `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_SYSTEMD}.slice`],
    ['bare id at the root', `/${ID}`],
    ['id too short', `/docker/${ID.slice(1)}`],
    ['id too long', `/docker/${ID}0`],
    ['scope id too short', `/system.slice/docker-${ID.slice(1)}.scope`],
    ['uppercase hex', `/docker/${ID.toUpperCase()}`],
    ['non-hex', `/docker/${'g'.repeat(64)}`],
    ['other suffix', `/system.slice/docker-${ID}.service`],
    ['garbage', 'not a path at all'],
    ['32-hex v1 group', '/process_api/4b5df9198ca411121bf0932465b266b4'],
  ];
  it.each(negatives)('not a container: %s', (_name, path) => {
    expect(parseCgroupPath(path)).toBeNull();
  });

  it("gives the container's own cgroup path in matchCgroupPath", () => {
    expect(matchCgroupPath(`/machine.slice/libpod-${ID}.scope/container`)).toEqual({
      containerId: ID,
      runtime: 'podman',
      podUid: '',
      cgroupPath: `/machine.slice/libpod-${ID}.scope`,
    });
  });
});

describe('parseProcCgroup', () => {
  it('takes the cgroup v2 line first', () => {
    const text = [`12:memory:/docker/${INNER}`, `0::/system.slice/docker-${ID}.scope`, ''].join('\n');
    expect(parseProcCgroup(text)).toEqual({
      containerId: ID,
      runtime: 'docker',
      podUid: '',
      cgroupPath: `/system.slice/docker-${ID}.scope`,
    });
  });

  it('falls back to v1 lines when the v2 cgroup names no container (hybrid host)', () => {
    const text = [
      '12:pids:/',
      `11:memory:/kubepods/burstable/pod${UID}/${ID}`,
      `1:name=systemd:/kubepods/burstable/pod${UID}/${ID}`,
      '0::/system.slice/containerd.service',
      '',
    ].join('\n');
    expect(parseProcCgroup(text)).toEqual({
      containerId: ID,
      runtime: 'unknown',
      podUid: UID,
      cgroupPath: `/kubepods/burstable/pod${UID}/${ID}`,
    });
  });

  it('reads v1-only content (no 0:: line)', () => {
    expect(parseProcCgroup(`4:cpu,cpuacct:/docker/${ID}\n`)?.containerId).toBe(ID);
  });

  it('keeps colons inside the path', () => {
    expect(parseProcCgroup(`0::/odd:dir/docker-${ID}.scope\n`)?.cgroupPath).toBe(`/odd:dir/docker-${ID}.scope`);
  });

  const negatives: Array<[string, string]> = [
    ['host process, pure v2', '0::/init.scope\n'],
    ['host process, hybrid', '9:name=systemd:/\n4:memory:/process_api/4b5df9198ca411121bf0932465b266b4\n0::/\n'],
    ['conmon', `0::/machine.slice/libpod-conmon-${ID}.scope\n`],
    ['empty', ''],
    ['garbage', 'hello\nworld'],
  ];
  it.each(negatives)('no container: %s', (_name, text) => {
    expect(parseProcCgroup(text)).toBeNull();
  });
});
