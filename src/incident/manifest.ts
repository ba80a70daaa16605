/**
 * The evidence bundle's manifest: what `manifest.json` holds and
 * `manifest.sig` signs (Ed25519 over its exact bytes). One directory per
 * incident under <dataDir>/incidents/<id>/, also packed as <id>.tar.gz.
 * The shapes here are the contract between capture, verify and inspect.
 */
import type { ContainerMetadata } from '../containers/metadata';
import type { AmberEvent } from '../sensor/events';

export const INCIDENTS_DIR = 'incidents';
export const MANIFEST_FILE = 'manifest.json';
export const SIGNATURE_FILE = 'manifest.sig';
export const MANIFEST_VERSION = 1;

export const ARTIFACT_KINDS = [
  'events', // the frozen window from the buffer (events.msgpack, events.jsonl)
  'memory', // an ELF core per dumped process: memory/<pid>.core
  'maps', // its maps at dump time and what was dumped or skipped: memory/<pid>.maps.json
  'executable', // executable/<pid>.exe, copied through /proc/<pid>/exe
  'upper-layer', // upper-layer.tar: the overlay upperdir (OCI layer conventions for deletions)
  'process', // process/<pid>.json: cmdline, status, environ (redacted), cgroup, mountinfo, fds, sockets
  'container', // container.json: runtime/pod metadata and the process tree
  'exposure', // exposure.json: capabilities, privileged, seccomp, host namespaces, sensitive mounts, token
  'log', // capture.log.jsonl: what the capture did, skipped and why, with timings
] as const;
export type ArtifactKind = (typeof ARTIFACT_KINDS)[number];

export interface Artifact {
  /** Relative to the bundle directory, '/'-separated, never '..'. */
  path: string;
  kind: ArtifactKind;
  size: number;
  /** Lowercase hex. */
  sha256: string;
  /** The process it is about, for memory/maps/executable/process. */
  pid?: number;
}

export type TriggerKind = 'drift' | 'rule' | 'manual';

export interface Trigger {
  kind: TriggerKind;
  /** The rule that opened it (drift: "drift" or the rule's name). */
  rule?: string;
  reason: string;
  /** The event or finding that opened it; manual triggers have none. */
  event?: AmberEvent;
  /** Who asked, for manual triggers (the API peer). */
  requestedBy?: string;
  /** Triggers that joined this incident after the first (dedupe window), counted. */
  joined?: number;
}

export interface Manifest {
  version: typeof MANIFEST_VERSION;
  id: string;
  /** RFC 3339. */
  createdAt: string;
  node: string;
  trigger: Trigger;
  container: { id: string; metadata: ContainerMetadata | null } | null;
  /** The frozen window around the trigger, ns since the epoch, and its bounds relative to it. */
  window: { from: number; to: number; beforeMs: number; afterMs: number; events: number; complete: boolean };
  tool: { name: 'amber'; version: string };
  artifacts: Artifact[];
  /** The public key that signs it, PEM (SPKI), for convenience; verify trusts only the key it is given. */
  publicKey: string;
}
