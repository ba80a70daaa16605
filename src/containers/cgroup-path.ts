/**
 * Container IDs from cgroup paths, as container runtimes name their cgroups.
 * Pure string work: used on cgroup v2 paths (from the kernel's mkdir records
 * and the tree walk) and on /proc/<pid>/cgroup content.
 */

export type ContainerRuntime = 'podman' | 'containerd' | 'cri-o' | 'docker' | 'unknown';

export interface ParsedCgroupPath {
  /** Full 64-hex container ID. */
  containerId: string;
  runtime: ContainerRuntime;
  /** Kubernetes pod UID with dashes, "" outside Kubernetes. */
  podUid: string;
}

export interface CgroupPathMatch extends ParsedCgroupPath {
  /** The container's own cgroup: the path up to the component that named the container. */
  cgroupPath: string;
}

const HEX64 = '[0-9a-f]{64}';

// One cgroup per container, named by the runtime; the conmon/monitor cgroups
// (libpod-conmon-<id>, crio-conmon-<id>) do not match because "conmon-" is
// not hex.
const PREFIXED_COMPONENTS: ReadonlyArray<{ pattern: RegExp; runtime: ContainerRuntime }> = [
  { pattern: new RegExp(`^libpod-(${HEX64})(?:\\.scope)?$`), runtime: 'podman' },
  { pattern: new RegExp(`^cri-containerd-(${HEX64})(?:\\.scope)?$`), runtime: 'containerd' },
  { pattern: new RegExp(`^crio-(${HEX64})(?:\\.scope)?$`), runtime: 'cri-o' },
  { pattern: new RegExp(`^docker-(${HEX64})(?:\\.scope)?$`), runtime: 'docker' },
];

// A bare ID directory: containerd's "/<namespace>/<id>", Docker's
// "/docker/<id>", kubelet cgroupfs "/kubepods/<qos>/pod<uid>/<id>".
const BARE_ID = new RegExp(`^${HEX64}$`);

// Kubernetes pod UIDs are UUIDs, except static (mirror) pods whose UID is a
// 32-hex hash. The systemd driver writes UUIDs with underscores.
const UID = '[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}';
const POD_CGROUPFS = new RegExp(`^pod(${UID})$`);
const POD_SYSTEMD = new RegExp(`^kubepods(?:-[a-z]+)?-pod(${UID})\\.slice$`);

function podUidOf(component: string): string {
  const m = POD_CGROUPFS.exec(component) ?? POD_SYSTEMD.exec(component);
  return m ? m[1].replace(/_/g, '-') : '';
}

function matchComponent(
  components: readonly string[],
  index: number,
): { containerId: string; runtime: ContainerRuntime } | null {
  const name = components[index];
  for (const { pattern, runtime } of PREFIXED_COMPONENTS) {
    const m = pattern.exec(name);
    if (m) return { containerId: m[1], runtime };
  }
  // A bare ID needs a parent directory to tell who made it; "/<id>" alone is
  // not a layout any runtime uses.
  if (index > 0 && BARE_ID.test(name)) {
    const parent = components[index - 1];
    if (parent === 'docker') return { containerId: name, runtime: 'docker' };
    // kubelet's cgroupfs layout does not say which CRI runtime made it
    if (podUidOf(parent) !== '') return { containerId: name, runtime: 'unknown' };
    return { containerId: name, runtime: 'containerd' };
  }
  return null;
}

/**
 * The container named by a cgroup path, with the path of its own cgroup.
 * The deepest match wins, so a container nested in another (Docker in
 * Docker, a pod's container running podman) is the inner one; components
 * below the match (a container's own sub-cgroups, e.g. systemd's init.scope
 * inside it) still belong to it.
 */
export function matchCgroupPath(path: string): CgroupPathMatch | null {
  const components = path.split('/').filter((c) => c !== '');
  for (let i = components.length - 1; i >= 0; i--) {
    const found = matchComponent(components, i);
    if (!found) continue;
    let podUid = '';
    for (let j = i - 1; j >= 0 && podUid === ''; j--) podUid = podUidOf(components[j]);
    return { ...found, podUid, cgroupPath: '/' + components.slice(0, i + 1).join('/') };
  }
  return null;
}

export function parseCgroupPath(path: string): ParsedCgroupPath | null {
  const match = matchCgroupPath(path);
  return match ? { containerId: match.containerId, runtime: match.runtime, podUid: match.podUid } : null;
}

/**
 * The container of a process from its /proc/<pid>/cgroup. The cgroup v2 line
 * ("0::<path>") is tried first; then the v1 lines in order, for hybrid hosts
 * where the runtime only places containers in v1 hierarchies.
 */
export function parseProcCgroup(text: string): CgroupPathMatch | null {
  const v1Paths: string[] = [];
  for (const line of text.split('\n')) {
    // "hierarchy-id:controllers:path"; the path itself may contain ':'
    const first = line.indexOf(':');
    const second = first < 0 ? -1 : line.indexOf(':', first + 1);
    if (second < 0) continue;
    const path = line.slice(second + 1);
    if (line.slice(0, second) === '0:') {
      const match = matchCgroupPath(path);
      if (match) return match;
    } else {
      v1Paths.push(path);
    }
  }
  for (const path of v1Paths) {
    const match = matchCgroupPath(path);
    if (match) return match;
  }
  return null;
}
