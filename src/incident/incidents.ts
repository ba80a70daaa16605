/**
 * Incidents: what opens them (an `incident` rule or drift finding, or a
 * person through the API), how repeated triggers join one, the bounds on
 * concurrent captures, and what the API and CLI see of them. The capture of
 * one incident into a signed bundle is capture.ts.
 */
import type { Manifest, Trigger } from './manifest';

/** What a person asks for (API TriggerIncident, `amber incidents trigger`): exactly one target. */
export interface TriggerRequest {
  /** A container ID (full, or a unique prefix of at least 12 hex digits). */
  container?: string;
  /** A Kubernetes pod, "NAMESPACE/NAME": its (first running) application container. */
  pod?: string;
  /** A host pid: its container, or the host process itself. */
  pid?: number;
  reason?: string;
  /** Who asked (the API peer), for the manifest. */
  requestedBy?: string;
}

/**
 * queued → capturing → signed (the bundle directory is signed and verified on disk; the responses run and
 * the archive is packed) → complete (the archive is there: pull and uploads) | failed.
 */
export type IncidentState = 'queued' | 'capturing' | 'signed' | 'complete' | 'failed';

export interface UploadSummary {
  sink: string;
  state: 'pending' | 'uploaded' | 'failed';
  attempts: number;
  lastError: string;
  /** Where it went (s3://bucket/key, sftp://host/dir/file) once uploaded. */
  remote: string;
}

export interface ResponseSummary {
  kind: 'freeze' | 'kill' | 'cut-network';
  /** "done", "in force", "released", or what failed. */
  state: string;
  at: string;
}

/** One incident as `amber incidents list/show` shows it. */
export interface IncidentSummary {
  id: string;
  state: IncidentState;
  /** RFC 3339, when it was opened. */
  createdAt: string;
  trigger: Trigger;
  containerId: string;
  /** "NAMESPACE/NAME" or "" when not a pod. */
  pod: string;
  /** The container's name and image ("" unknown). */
  container: string;
  image: string;
  /** Triggers for the same container that joined it (within incident.joinWindow). */
  joined: number;
  /** The archive's bytes once packed (0 before). */
  bytes: number;
  /** Why the capture failed (state failed). */
  error: string;
  uploads: UploadSummary[];
  responses: ResponseSummary[];
}

export interface TriggerResult {
  id: string;
  /** True when the trigger joined an incident already open for the same container. */
  joined: boolean;
  state: IncidentState;
}

/** The agent's incidents, as the API serves them (implemented by IncidentManager). */
export interface Incidents {
  /** Opens (or joins) an incident; the capture runs in the background. Rejects with IncidentError (code) on a bad or unknown target or when at capacity. */
  trigger(request: TriggerRequest): Promise<TriggerResult>;
  list(): Promise<IncidentSummary[]>;
  /** The incident and, once complete, its manifest's exact bytes (what manifest.sig signs) and, when at hand, manifest.sig. */
  show(id: string): Promise<{ summary: IncidentSummary; manifest: Buffer | null; manifestObject: Manifest | null; signature?: Buffer | null } | null>;
  /** The archive (<id>.tar.gz) to stream: its path and size; null when not complete. */
  archive(id: string): Promise<{ path: string; size: number; sha256: string } | null>;
  /** Lifts the incident's network cut and freeze responses. */
  release(id: string): Promise<ResponseSummary[]>;
  /** The public signing key, PEM (SPKI). */
  publicKey(): string;
}

export type IncidentErrorCode = 'invalid' | 'not-found' | 'exhausted' | 'unavailable';

export class IncidentError extends Error {
  override name = 'IncidentError';
  constructor(
    readonly code: IncidentErrorCode,
    message: string,
  ) {
    super(message);
  }
}
