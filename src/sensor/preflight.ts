/**
 * What the sensor needs from the host, checked before loading so that a
 * failure names the missing piece (capability, BTF, cgroup2) instead of an
 * errno from deep inside libbpf.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

export class PreflightError extends Error {
  constructor(
    message: string,
    readonly missing: 'capability' | 'btf' | 'cgroup2' | 'kernel',
  ) {
    super(message);
    this.name = 'PreflightError';
  }
}

const CAP = { NET_ADMIN: 12, SYS_ADMIN: 21, SYS_PTRACE: 19, PERFMON: 38, BPF: 39 } as const;

export function effectiveCapabilities(statusText = fs.readFileSync('/proc/self/status', 'utf8')): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(statusText);
  return m ? BigInt(`0x${m[1]}`) : 0n;
}

function has(caps: bigint, bit: number): boolean {
  return (caps & (1n << BigInt(bit))) !== 0n;
}

/** Capabilities loading and attaching needs; returns the names of those missing. */
export function missingCapabilities(caps: bigint, needCgroupSkb: boolean): string[] {
  const missing: string[] = [];
  const admin = has(caps, CAP.SYS_ADMIN);
  if (!admin && !has(caps, CAP.BPF)) missing.push('CAP_BPF (or CAP_SYS_ADMIN)');
  if (!admin && !has(caps, CAP.PERFMON)) missing.push('CAP_PERFMON (or CAP_SYS_ADMIN)');
  if (needCgroupSkb && !has(caps, CAP.NET_ADMIN)) missing.push('CAP_NET_ADMIN (for the DNS programs)');
  return missing;
}

export function checkBtf(btfPath = '/sys/kernel/btf/vmlinux'): void {
  if (!fs.existsSync(btfPath)) {
    throw new PreflightError(
      `kernel BTF not found at ${btfPath}: Amber's CO-RE programs need a kernel built with CONFIG_DEBUG_INFO_BTF=y`,
      'btf',
    );
  }
}

/** Mount points of a filesystem type, from mountinfo text. */
export function mountsOfType(mountinfo: string, fstype: string): string[] {
  const out: string[] = [];
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0) continue;
    const fields = line.slice(0, sep).split(' ');
    const type = line.slice(sep + 3).split(' ')[0];
    if (type === fstype && fields[4]) out.push(fields[4].replace(/\\040/g, ' '));
  }
  return out;
}

export const PRIVATE_CGROUP2_MOUNT = '/run/amber/cgroup2';

/**
 * The cgroup v2 root: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified
 * on hybrid ones, any other cgroup2 mount, or one Amber mounts itself.
 */
export function findCgroup2Root(mountinfo = fs.readFileSync('/proc/self/mountinfo', 'utf8'), mount = true): string {
  const mounts = mountsOfType(mountinfo, 'cgroup2');
  for (const preferred of ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
    if (mounts.includes(preferred)) return preferred;
  }
  if (mounts.length > 0) return mounts[0];
  if (!mount) throw new PreflightError('no cgroup2 filesystem is mounted', 'cgroup2');
  try {
    fs.mkdirSync(PRIVATE_CGROUP2_MOUNT, { recursive: true });
    execFileSync('mount', ['-t', 'cgroup2', 'none', PRIVATE_CGROUP2_MOUNT], { stdio: 'pipe' });
    return PRIVATE_CGROUP2_MOUNT;
  } catch (err) {
    const detail = (err as { stderr?: Buffer }).stderr?.toString().trim() || String(err);
    throw new PreflightError(
      `no cgroup2 filesystem is mounted and mounting one at ${PRIVATE_CGROUP2_MOUNT} failed (${detail}): ` +
        'mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup/unified) or run with CAP_SYS_ADMIN',
      'cgroup2',
    );
  }
}

export interface HostFacts {
  cgroupRoot: string;
}

export function preflight(opts: { needCgroupSkb: boolean; cgroupRoot?: string }): HostFacts {
  const missing = missingCapabilities(effectiveCapabilities(), opts.needCgroupSkb);
  if (missing.length > 0) {
    throw new PreflightError(
      `the sensor needs capabilities it does not have: ${missing.join(', ')} (run as root or grant them)`,
      'capability',
    );
  }
  checkBtf();
  return { cgroupRoot: opts.cgroupRoot ?? findCgroup2Root() };
}
