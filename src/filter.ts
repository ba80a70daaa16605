/**
 * The one event filter: `amber trace`, `amber buffer query`, live API streams,
 * pipeline subscriptions and rules all say "which events" with these fields,
 * and the CLI spells them the same way in every command (src/cli/filter-options.ts).
 * The buffer adds block pruning on top of it (src/buffer/query.ts).
 */
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
}

export type EventMatcher = (ev: AmberEvent) => boolean;

/** Rejects filters that cannot mean what the caller wanted, with a message saying why. */
export function validateFilter(filter: EventFilter): void {
  const { since, until, types, container, scope, pid, comm, match } = filter;
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
}

/** A filter with nothing set matches everything: callers may skip it. */
export function isEmptyFilter(filter: EventFilter): boolean {
  return Object.values(filter).every((v) => v === undefined);
}

/**
 * Compiles a filter once into a predicate. It tolerates events that miss
 * contract fields (a damaged or foreign stored block): they just do not
 * match on those fields.
 */
export function compileFilter(filter: EventFilter): EventMatcher {
  const { since, until, container, scope, pid, comm, match } = filter;
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
    return true;
  };
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
