import { describe, expect, it } from 'vitest';
import { checkBtf, effectiveCapabilities, findCgroup2Root, missingCapabilities, mountsOfType, PreflightError } from '../../src/sensor/preflight';

const HYBRID = `25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
`;
const UNIFIED = `30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw
31 1 0:27 / /mnt/with\\040space rw - cgroup2 cgroup2 rw
`;

describe('preflight', () => {
  it('finds cgroup2 on unified and hybrid hosts', () => {
    expect(findCgroup2Root(UNIFIED, false)).toBe('/sys/fs/cgroup');
    expect(findCgroup2Root(HYBRID, false)).toBe('/sys/fs/cgroup/unified');
    expect(mountsOfType(UNIFIED, 'cgroup2')).toEqual(['/sys/fs/cgroup', '/mnt/with space']);
  });

  it('names cgroup2 when there is none and it may not mount one', () => {
    const noCgroup2 = '40 1 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n';
    expect(() => findCgroup2Root(noCgroup2, false)).toThrow(PreflightError);
    try {
      findCgroup2Root(noCgroup2, false);
    } catch (err) {
      expect(err).toMatchObject({ missing: 'cgroup2', message: 'no cgroup2 filesystem is mounted' });
    }
  });

  it('names BTF when the kernel has none', () => {
    expect(() => checkBtf('/nonexistent/vmlinux')).toThrow(
      'kernel BTF not found at /nonexistent/vmlinux: Amber\'s CO-RE programs need a kernel built with CONFIG_DEBUG_INFO_BTF=y',
    );
  });

  it('names the capabilities that are missing', () => {
    const status = (hex: string) => `Name:\tamber\nCapEff:\t${hex}\n`;
    // root without CAP_SYS_RESOURCE, as on the development machines: nothing missing
    expect(missingCapabilities(effectiveCapabilities(status('000001fffeffffff')), true)).toEqual([]);
    // nobody
    expect(missingCapabilities(effectiveCapabilities(status('0000000000000000')), true)).toEqual([
      'CAP_BPF (or CAP_SYS_ADMIN)',
      'CAP_PERFMON (or CAP_SYS_ADMIN)',
      'CAP_NET_ADMIN (for the DNS programs)',
    ]);
    // CAP_BPF + CAP_PERFMON, no DNS asked: enough
    const bpfPerfmon = ((1n << 39n) | (1n << 38n)).toString(16);
    expect(missingCapabilities(effectiveCapabilities(status(bpfPerfmon)), false)).toEqual([]);
    expect(missingCapabilities(effectiveCapabilities(status(bpfPerfmon)), true)).toEqual(['CAP_NET_ADMIN (for the DNS programs)']);
  });
});
