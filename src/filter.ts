/**
 * The one event filter: `amber trace`, `amber buffer query`, live API streams,
 * pipeline subscriptions and rules all say "which events" with these fields,
 * and the CLI spells them the same way in every command (src/cli/filter-options.ts).
 * The buffer adds block pruning on top of it (src/buffer/query.ts).
 */
import type { ContainerFields } from './containers/metadata-dir';
import { type AmberEvent, EVENT_TYPES, type EventType } from './sensor/events';

/** Host processes only, or container processes only. */
export type Scope = 'host' | 'containers';

export interface EventFilter {
  /** Inclusive lower bound, ns since the epoch. */
  since?: number;
  /** Inclusive upper bound, ns since the epoch. */
  until?: number;
  types?: readonly EventType[];
  /** Container ID prefix (container processes only). */
  container?: string;
  scope?: Scope;
  /** Thread group id, host pid namespace. */
  pid?: number;
  /** Exact process name. */
  comm?: string;
  /** Substring of an open's path; an exec's exePath, filename, script or args joined with spaces; a DNS name or answer; a drift's path, exePath or SHA-256; an alert's rule names. */
  match?: string;
  /** Exact Kubernetes pod name (container metadata, joined at read time). */
  pod?: string;
  /** Exact Kubernetes namespace. */
  namespace?: string;
  /** Substring of the container's image reference. */
  image?: string;
}

/** A container's joined fields by container ID (metadata store or a data dir's containers/ files). */
export type ContainerLookup = (containerId: string) => ContainerFields | undefined;

export type EventMatcher = (ev: AmberEvent) => boolean;

/** Rejects filters that cannot mean what the caller wanted, with a message saying why. */
export function validateFilter(filter: EventFilter): void {
  const { since, until, types, container, scope, pid, comm, match, pod, namespace, image } = filter;
  if (since !== undefined && !Number.isFinite(since)) throw new RangeError('since must be a finite number of ns');
  if (until !== undefined && !Number.isFinite(until)) throw new RangeError('until must be a finite number of ns');
  if (since !== undefined && until !== undefined && since > until) {
    throw new RangeError('since is after until: the time range is empty');
  }
  if (types !== undefined) {
    for (const t of types) {
      if (!(EVENT_TYPES as readonly string[]).includes(t)) {
        throw new RangeError(`unknown event type "${t}" (known: ${EVENT_TYPES.join(', ')})`);
      }
    }
  }
  if (container !== undefined && container === '') throw new RangeError('container must not be empty');
  if (scope !== undefined && scope !== 'host' && scope !== 'containers') {
    throw new RangeError(`scope must be "host" or "containers", not "${String(scope)}"`);
  }
  if (container !== undefined && scope === 'host') {
    throw new RangeError('a container ID and host processes only exclude each other');
  }
  if (pid !== undefined && !(Number.isInteger(pid) && pid >= 0)) throw new RangeError('pid must be a non-negative integer');
  if (comm !== undefined && comm === '') throw new RangeError('comm must not be empty');
  if (match !== undefined && match === '') throw new RangeError('match must not be empty');
  if (pod !== undefined && pod === '') throw new RangeError('pod must not be empty');
  if (namespace !== undefined && namespace === '') throw new RangeError('namespace must not be empty');
  if (image !== undefined && image === '') throw new RangeError('image must not be empty');
  if ((pod !== undefined || namespace !== undefined || image !== undefined) && scope === 'host') {
    throw new RangeError('pod, namespace and image select containers: they exclude host processes only');
  }
}

/**
 * A filter split for a reader of stored events (the buffer stores container IDs only):
 * what the buffer can apply, and the pod/namespace/image part to apply after the join
 * (undefined when there is none).
 */
export function splitContainerFilter(filter: EventFilter): { stored: EventFilter; joined: EventFilter | undefined } {
  const { pod, namespace, image, ...stored } = filter;
  if (pod === undefined && namespace === undefined && image === undefined) return { stored, joined: undefined };
  // the joined part selects container processes only: the buffer may prune host-only blocks
  return { stored: stored.scope === undefined ? { ...stored, scope: 'containers' } : stored, joined: { pod, namespace, image } };
}

/** A filter with nothing set matches everything: callers may skip it. */
export function isEmptyFilter(filter: EventFilter): boolean {
  return Object.values(filter).every((v) => v === undefined);
}

/**
 * Compiles a filter once into a predicate. It tolerates events that miss
 * contract fields (a damaged or foreign stored block): they just do not
 * match on those fields. pod, namespace and image come from the event when it
 * is already joined (withMetadata), else from `lookup`; an event whose
 * container is unknown does not match them.
 */
export function compileFilter(filter: EventFilter, lookup?: ContainerLookup): EventMatcher {
  const { since, until, container, scope, pid, comm, match, pod, namespace, image } = filter;
  const byContainer = pod !== undefined || namespace !== undefined || image !== undefined;
  const types = filter.types ? new Set<string>(filter.types) : undefined;
  return (ev) => {
    if (types && !types.has(ev.type)) return false;
    if (since !== undefined && !(ev.ts >= since)) return false;
    if (until !== undefined && !(ev.ts <= until)) return false;
    if (container !== undefined || scope !== undefined) {
      const id = typeof ev.containerId === 'string' ? ev.containerId : '';
      if (scope === 'host' && id !== '') return false;
      if (scope === 'containers' && id === '') return false;
      if (container !== undefined && !id.startsWith(container)) return false; // never "" (validated)
    }
    if (pid !== undefined && ev.pid !== pid) return false;
    if (comm !== undefined && ev.comm !== comm) return false;
    if (match !== undefined && !eventText(ev).some((text) => text.includes(match))) return false;
    if (byContainer) {
      const fields = containerFields(ev, lookup);
      if (fields === undefined) return false;
      if (pod !== undefined && fields.pod !== pod) return false;
      if (namespace !== undefined && fields.namespace !== namespace) return false;
      if (image !== undefined && !(typeof fields.image === 'string' && fields.image.includes(image))) return false;
    }
    return true;
  };
}

/** The joined fields an event carries, or its container's from the lookup. */
function containerFields(ev: AmberEvent, lookup: ContainerLookup | undefined): Partial<ContainerFields> | undefined {
  const joined = ev as AmberEvent & Partial<ContainerFields>;
  if (typeof joined.runtime === 'string') return joined;
  const id = typeof ev.containerId === 'string' ? ev.containerId : '';
  return id === '' || lookup === undefined ? undefined : lookup(id);
}

/** The texts `match` searches in. */
function eventText(ev: AmberEvent): string[] {
  let texts: unknown[];
  switch (ev.type) {
    case 'open':
      texts = [ev.path];
      break;
    case 'exec':
      texts = [ev.exePath, ev.filename, ev.script, Array.isArray(ev.args) ? ev.args.join(' ') : undefined];
      break;
    case 'dns':
      texts = [ev.name, ...(Array.isArray(ev.answers) ? ev.answers.map((a) => a?.data) : [])];
      break;
    case 'drift':
      texts = [ev.path, ev.sha256, ev.exec?.exePath, ev.exec?.filename];
      break;
    case 'alert':
      texts = Array.isArray(ev.rules) ? ev.rules : [];
      break;
    default:
      texts = [];
  }
  return texts.filter((t): t is string => typeof t === 'string');
}
