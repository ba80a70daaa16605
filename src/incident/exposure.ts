/**
 * How exposed a container's process is to the host (exposure.json): its
 * capabilities, seccomp, the namespaces it shares with the host, the host
 * paths and writable kernel interfaces mounted into it, and a Kubernetes
 * service-account token. The host is a reference process (pid 1 by default):
 * its namespaces, bounding set and mount table. When the agent may not read
 * the reference (another LSM, a ptrace policy), its own process stands in,
 * and the bundle says so in `errors`.
 */
import * as fs from 'fs';
import * as path from 'path';
import { readBoundedFile } from '../containers/metadata-files';
import type { MountinfoEntry } from '../containers/metadata-mountinfo';
import { lstatUnder } from '../detect/files';
import type { ExposureFacts, SensitiveMount } from './facts-types';
import { parseMountinfo, parseStatus } from './process-facts';

export const NAMESPACE_KINDS = ['pid', 'net', 'ipc', 'uts', 'mnt', 'user', 'cgroup'] as const;
export type NamespaceKind = (typeof NAMESPACE_KINDS)[number];

/** exposure.json: the facts inspect reads, and what could not be learned and why. */
export interface Exposure extends ExposureFacts {
  errors: string[];
}

const SECCOMP_MODES: Record<string, ExposureFacts['seccomp']> = { '0': 'disabled', '1': 'strict', '2': 'filter' };

export const DEFAULT_EXPOSURE = { procRoot: '/proc', hostPid: 1, maxMountinfoBytes: 4 << 20 } as const;

export interface ExposureOptions {
  procRoot?: string;
  /** The process whose namespaces, bounding set and mounts are the host's. */
  hostPid?: number;
  maxMountinfoBytes?: number;
}

/** linux/capability.h, by bit. */
export const CAPABILITY_NAMES = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_DAC_READ_SEARCH',
  'CAP_FOWNER',
  'CAP_FSETID',
  'CAP_KILL',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETPCAP',
  'CAP_LINUX_IMMUTABLE',
  'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST',
  'CAP_NET_ADMIN',
  'CAP_NET_RAW',
  'CAP_IPC_LOCK',
  'CAP_IPC_OWNER',
  'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO',
  'CAP_SYS_CHROOT',
  'CAP_SYS_PTRACE',
  'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT',
  'CAP_SYS_NICE',
  'CAP_SYS_RESOURCE',
  'CAP_SYS_TIME',
  'CAP_SYS_TTY_CONFIG',
  'CAP_MKNOD',
  'CAP_LEASE',
  'CAP_AUDIT_WRITE',
  'CAP_AUDIT_CONTROL',
  'CAP_SETFCAP',
  'CAP_MAC_OVERRIDE',
  'CAP_MAC_ADMIN',
  'CAP_SYSLOG',
  'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND',
  'CAP_AUDIT_READ',
  'CAP_PERFMON',
  'CAP_BPF',
  'CAP_CHECKPOINT_RESTORE',
] as const;

/** A status capability mask ("000001fffeffffff") as names, by bit; bits newer than this table as CAP_<bit>. */
export function capabilityNames(mask: bigint): string[] {
  const names: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if ((mask >> BigInt(bit)) & 1n) names.push(CAPABILITY_NAMES[bit] ?? `CAP_${bit}`);
  }
  return names;
}

function capMask(status: Record<string, string>, key: string): bigint | null {
  const v = status[key];
  return v !== undefined && /^[0-9a-f]{1,16}$/i.test(v) ? BigInt(`0x${v}`) : null;
}

const HOST_RUN = "the host's /run: container runtime sockets and services' state";
const RUNTIME_STORAGE = "a container runtime's storage: every container's files";
/** Host paths whose exposure matters: mounting one, or a directory above one, exposes it. */
const SENSITIVE_HOST_PATHS: ReadonlyArray<[string, string]> = [
  ['/', "the host's root filesystem"],
  ['/etc', "the host's /etc: accounts, password hashes, cron, runtime and kubelet configuration"],
  ['/run', HOST_RUN],
  ['/var/run', HOST_RUN],
  ['/var/lib/kubelet', "kubelet's state: every pod's volumes and service-account tokens"],
  ['/var/lib/containerd', RUNTIME_STORAGE],
  ['/var/lib/containers', RUNTIME_STORAGE],
  ['/var/lib/docker', RUNTIME_STORAGE],
  ['/var/log', "the host's logs"],
  ['/proc', "the host's /proc"],
  ['/sys', "the host's /sys"],
  ['/dev', "the host's devices"],
  ['/boot', "the host's kernel and boot loader"],
  ['/root', "root's home on the host: keys and credentials"],
  ['/home', "the host users' homes"],
];
export const RUNTIME_SOCKETS = ['containerd.sock', 'crio.sock', 'docker.sock', 'podman.sock', 'dockershim.sock', 'cri-dockerd.sock'];
const RUNTIME_SOCKET_PATHS = [
  '/run/containerd/containerd.sock',
  '/run/k3s/containerd/containerd.sock',
  '/run/crio/crio.sock',
  '/run/docker.sock',
  '/var/run/docker.sock',
  '/run/podman/podman.sock',
  '/run/dockershim.sock',
  '/run/cri-dockerd.sock',
];
const SOCKET_REASON = 'container runtime socket: whoever can write to it controls every container on the host';
/** Where runtimes keep each container's own files (its root, /etc/hosts, /dev/shm, a pod's volumes): not a host path the workload asked for. */
const RUNTIME_OWN_PREFIXES = [
  '/var/lib/containers/storage/',
  '/run/containers/storage/',
  '/var/run/containers/storage/',
  '/run/libpod/',
  '/var/lib/kubelet/pods/',
  '/var/lib/containerd/io.containerd.',
  '/run/containerd/io.containerd.',
  '/run/k3s/containerd/io.containerd.',
  '/var/lib/rancher/k3s/agent/containerd/io.containerd.',
  '/var/lib/docker/containers/',
  '/var/lib/docker/overlay2/',
];
/** Kernel interfaces, not directories: a host mapping of these is judged by the table above only. */
const PSEUDO_FILESYSTEMS = new Set([
  'proc',
  'sysfs',
  'cgroup',
  'cgroup2',
  'devpts',
  'mqueue',
  'nsfs',
  'securityfs',
  'debugfs',
  'tracefs',
  'bpf',
  'configfs',
  'fusectl',
  'pstore',
  'hugetlbfs',
  'binfmt_misc',
  'autofs',
  'efivarfs',
]);
const SERVICE_ACCOUNT_DIR = /^(\/var)?\/run\/secrets\/(kubernetes\.io|eks\.amazonaws\.com)\/serviceaccount$/;
const PROJECTED_VOLUME = '/volumes/kubernetes.io~projected/';

/** a is b or a directory above it. */
function isAncestorOrSame(a: string, b: string): boolean {
  return a === b || a === '/' || b.startsWith(`${a}/`);
}

export function isWritable(m: MountinfoEntry): boolean {
  return m.mountOptions.includes('rw') && !m.superOptions.some(([k]) => k === 'ro');
}

/**
 * The host path a mount of the container shows: the host mount of the same
 * device whose root holds the mount's root (deepest root first, then the
 * shortest mount point), or null when the filesystem is the container's own
 * (a tmpfs, a new proc or sysfs instance).
 */
export function hostPathOf(m: MountinfoEntry, hostMounts: readonly MountinfoEntry[]): string | null {
  let best: MountinfoEntry | null = null;
  for (const h of hostMounts) {
    if (h.majorMinor !== m.majorMinor) continue;
    if (!(m.root === h.root || h.root === '/' || m.root.startsWith(`${h.root}/`))) continue;
    if (best === null || h.root.length > best.root.length || (h.root.length === best.root.length && h.mountPoint.length < best.mountPoint.length)) best = h;
  }
  if (best === null) return null;
  const rest = best.root === '/' ? m.root : m.root.slice(best.root.length);
  return rest === '/' || rest === '' ? best.mountPoint : path.posix.join(best.mountPoint, rest);
}

/** Why a host path is sensitive ("" when it is not in the table): itself, else what it holds. */
function hostPathReason(hostPath: string): string {
  const same = SENSITIVE_HOST_PATHS.find(([p]) => p === hostPath);
  if (same) return same[1];
  if (RUNTIME_SOCKETS.includes(path.posix.basename(hostPath))) return SOCKET_REASON;
  const held = new Set<string>();
  for (const socket of RUNTIME_SOCKET_PATHS) if (isAncestorOrSame(hostPath, socket)) held.add(`${SOCKET_REASON} (${socket})`);
  for (const [p, reason] of SENSITIVE_HOST_PATHS) if (isAncestorOrSame(hostPath, p)) held.add(reason);
  return held.size > 0 ? `holds ${[...held].join('; ')}` : '';
}

/** The mount that shows a path of the container: the deepest mount point above it, the last mounted on ties. */
function coveringMount(mounts: readonly MountinfoEntry[], p: string): MountinfoEntry | null {
  let best: MountinfoEntry | null = null;
  for (const m of mounts) if (isAncestorOrSame(m.mountPoint, p) && (best === null || m.mountPoint.length >= best.mountPoint.length)) best = m;
  return best;
}

/** Sensitive mounts of a container, from its mount table and the host's; see the module comment. */
export function sensitiveMounts(mounts: readonly MountinfoEntry[], hostMounts: readonly MountinfoEntry[]): SensitiveMount[] {
  const found: Array<SensitiveMount & { hostPath: string | null }> = [];
  for (const m of mounts) {
    const hostPath = hostPathOf(m, hostMounts);
    // a submount that came with a flagged bind mount (rbind) says nothing new
    if (
      hostPath !== null &&
      found.some((f) => f.hostPath !== null && m.mountPoint.startsWith(`${f.path}/`) && isAncestorOrSame(f.hostPath, hostPath))
    ) {
      continue;
    }
    const reasons: string[] = [];
    const own = hostPath !== null && RUNTIME_OWN_PREFIXES.some((p) => hostPath.startsWith(p));
    if (hostPath !== null && !own) {
      const reason = hostPathReason(hostPath);
      if (reason !== '') reasons.push(reason);
      else if (!PSEUDO_FILESYSTEMS.has(m.fsType)) reasons.push('a host path mounted in (hostPath-style bind mount)');
    }
    const writable = isWritable(m);
    if (m.fsType === 'sysfs' && writable) reasons.push('sysfs mounted read-write: kernel and device settings');
    if (m.fsType === 'proc' && writable && m.mountPoint === '/proc') {
      const sys = coveringMount(mounts, '/proc/sys');
      if (sys !== null && sys.fsType === 'proc' && isWritable(sys)) reasons.push('proc mounted read-write with a writable /proc/sys: host kernel tunables');
    }
    if (reasons.length === 0) continue;
    found.push({ path: m.mountPoint, source: hostPath ?? m.source, reason: reasons.join('; '), writable, hostPath });
  }
  return found.map(({ path: p, source, reason, writable }) => ({ path: p, source, reason, writable }));
}

/** A service-account token mounted the way kubelet mounts them, present in the container's root. */
export function findServiceAccountToken(
  mounts: readonly MountinfoEntry[],
  hostMounts: readonly MountinfoEntry[],
  containerRoot: string,
): { mounted: boolean; path?: string } {
  for (const m of mounts) {
    const hostPath = hostPathOf(m, hostMounts) ?? '';
    if (!SERVICE_ACCOUNT_DIR.test(m.mountPoint) && !hostPath.includes(PROJECTED_VOLUME)) continue;
    const token = `${m.mountPoint}/token`;
    // kubelet's atomic writer makes "token" a symlink into ..data: lstat it, never follow
    if (lstatUnder(containerRoot, token) !== null) return { mounted: true, path: token };
  }
  return { mounted: false };
}

function message(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err as Error).message;
}

/** The exposure of one process; errors name what could not be read instead of failing the whole. */
export async function assessExposure(pid: number, options: ExposureOptions = {}): Promise<Exposure> {
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new Error(`not a pid: ${pid}`);
  const procRoot = options.procRoot ?? DEFAULT_EXPOSURE.procRoot;
  const hostPid = options.hostPid ?? DEFAULT_EXPOSURE.hostPid;
  const maxMountinfo = options.maxMountinfoBytes ?? DEFAULT_EXPOSURE.maxMountinfoBytes;
  const dir = path.join(procRoot, String(pid));
  const exposure: Exposure = {
    pid,
    capabilities: { effective: [], permitted: [], bounding: [], inheritable: [], ambient: [] },
    privileged: false,
    seccomp: 'unknown',
    noNewPrivs: false,
    hostNamespaces: { pid: false, net: false, ipc: false, uts: false, mnt: false, user: false, cgroup: false },
    sensitiveMounts: [],
    serviceAccountToken: { mounted: false },
    errors: [],
  };
  /** Reads a piece of the host's reference process, or the agent's own when that is refused. */
  const fromHost = async <T>(what: string, read: (procDir: string) => Promise<T>): Promise<T | null> => {
    try {
      return await read(path.join(procRoot, String(hostPid)));
    } catch (err) {
      try {
        const own = await read(path.join(procRoot, 'self'));
        exposure.errors.push(`host ${what}: pid ${hostPid}: ${message(err)}; the agent's own compared instead`);
        return own;
      } catch (err2) {
        exposure.errors.push(`host ${what}: pid ${hostPid}: ${message(err)}; the agent's own: ${message(err2)}`);
        return null;
      }
    }
  };

  let effective: bigint | null = null;
  try {
    const status = parseStatus(await readBoundedFile(path.join(dir, 'status'), 64 * 1024));
    effective = capMask(status, 'CapEff');
    exposure.capabilities = {
      effective: capabilityNames(effective ?? 0n),
      permitted: capabilityNames(capMask(status, 'CapPrm') ?? 0n),
      bounding: capabilityNames(capMask(status, 'CapBnd') ?? 0n),
      inheritable: capabilityNames(capMask(status, 'CapInh') ?? 0n),
      ambient: capabilityNames(capMask(status, 'CapAmb') ?? 0n),
    };
    exposure.seccomp = SECCOMP_MODES[status.Seccomp ?? ''] ?? 'unknown';
    exposure.noNewPrivs = status.NoNewPrivs === '1';
  } catch (err) {
    exposure.errors.push(`status: ${message(err)}`);
  }
  const hostBounding = await fromHost('bounding set', async (d) => {
    const mask = capMask(parseStatus(await readBoundedFile(path.join(d, 'status'), 64 * 1024)), 'CapBnd');
    if (mask === null) throw new Error('no CapBnd in status');
    return mask;
  });
  // as --privileged gives: everything the host could grant, and no seccomp filter
  if (effective !== null && hostBounding !== null) {
    exposure.privileged = (effective & hostBounding) === hostBounding && exposure.seccomp === 'disabled';
  }

  const readNamespaces = async (d: string): Promise<Map<string, string>> => {
    const links = new Map<string, string>();
    for (const kind of NAMESPACE_KINDS) links.set(kind, await fs.promises.readlink(path.join(d, 'ns', kind)));
    return links;
  };
  const hostNs = await fromHost('namespaces', readNamespaces);
  for (const kind of NAMESPACE_KINDS) {
    try {
      const own = await fs.promises.readlink(path.join(dir, 'ns', kind));
      exposure.hostNamespaces[kind] = hostNs !== null && hostNs.get(kind) === own;
    } catch (err) {
      exposure.errors.push(`ns/${kind}: ${message(err)}`);
    }
  }

  try {
    const mounts = parseMountinfo(await readBoundedFile(path.join(dir, 'mountinfo'), maxMountinfo));
    const hostMounts =
      (await fromHost('mount table', async (d) => parseMountinfo(await readBoundedFile(path.join(d, 'mountinfo'), maxMountinfo)))) ?? [];
    exposure.sensitiveMounts = sensitiveMounts(mounts, hostMounts);
    exposure.serviceAccountToken = findServiceAccountToken(mounts, hostMounts, path.join(dir, 'root'));
  } catch (err) {
    exposure.errors.push(`mountinfo: ${message(err)}`);
  }
  return exposure;
}
