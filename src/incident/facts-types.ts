/**
 * What container.json and exposure.json hold: written by the capture's facts
 * step, read by `amber inspect`. Plain JSON; readers treat a bundle as
 * untrusted input and check each field before use.
 */
import type { ContainerMetadata } from '../containers/metadata';

export const CONTAINER_FILE = 'container.json';
export const EXPOSURE_FILE = 'exposure.json';

/** One process of the container at capture time, with its children (by ppid). */
export interface ProcessNode {
  pid: number;
  ppid: number;
  comm: string;
  /** /proc/<pid>/exe in the container's view; "" when it could not be read. */
  exePath: string;
  args: string[];
  children: ProcessNode[];
}

/** container.json */
export interface ContainerFacts {
  metadata: ContainerMetadata | null;
  /** The container's processes as a forest: each root is a process whose parent is outside the container (its init first). */
  tree: ProcessNode[];
}

/** A mount of the container that exposes the host (the container runtime's socket, /proc, /, a device...). */
export interface SensitiveMount {
  /** Where the container sees it. */
  path: string;
  /** The host path or filesystem behind it (mountinfo's root, or the source for special filesystems). */
  source: string;
  /** Why it matters: "container runtime socket", "host root", "host /proc", ... */
  reason: string;
  writable: boolean;
}

/** exposure.json: what the process that triggered the incident could reach. */
export interface ExposureFacts {
  /** The process measured (the trigger's). */
  pid: number;
  /** Capability names as in capabilities(7), upper case ("CAP_SYS_ADMIN"). */
  capabilities: { effective: string[]; permitted: string[]; bounding: string[]; inheritable: string[]; ambient: string[] };
  /** Every capability in the bounding set and no seccomp, as `--privileged` gives. */
  privileged: boolean;
  /** /proc/<pid>/status Seccomp: 0 disabled, 1 strict, 2 filter. */
  seccomp: 'disabled' | 'strict' | 'filter' | 'unknown';
  noNewPrivs: boolean;
  /** True where the process shares the host's namespace (same inode as the host's init). */
  hostNamespaces: { pid: boolean; net: boolean; ipc: boolean; uts: boolean; mnt: boolean; user: boolean; cgroup: boolean };
  sensitiveMounts: SensitiveMount[];
  /** A Kubernetes service account token mounted into the container, and where. */
  serviceAccountToken: { mounted: boolean; path?: string };
}
