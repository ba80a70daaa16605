/**
 * The filter options every command spells the same way (`amber trace`,
 * `amber buffer query`, ...), parsed into the one EventFilter (src/filter.ts).
 */
import type { EventFilter } from '../filter';
import type { Range } from '../defaults';
import { parseDurationMs, parseTimeArg } from '../time';
import { parseEventTypes, UsageError } from './usage';

/** parseArgs option specs; commands spread them into their own. */
export const FILTER_OPTIONS = {
  container: { type: 'string' },
  host: { type: 'boolean' },
  'containers-only': { type: 'boolean' },
  pid: { type: 'string' },
  comm: { type: 'string' },
  match: { type: 'string' },
  pod: { type: 'string' },
  namespace: { type: 'string' },
  image: { type: 'string' },
} as const;

export const TIME_OPTIONS = {
  since: { type: 'string' },
  until: { type: 'string' },
} as const;

export const FILTER_USAGE = `  --container ID              only this container (ID prefix)
  --host                      only host processes
  --containers-only           only container processes
  --pid N                     only this process (host pid)
  --comm NAME                 only this command name
  --match TEXT                text in a path, executable, filename, script, DNS name or answer, or the args
  --pod NAME                  only this Kubernetes pod (exact name)
  --namespace NS              only this Kubernetes namespace (exact)
  --image TEXT                only containers whose image reference contains TEXT`;

export const TIME_USAGE = `  --since T, --until T        T: a duration ago (30s, 5m, 1h30m, 2d), now, an RFC 3339 time
                              (2024-05-01T12:00:00Z) or ns since the epoch`;

export interface FilterOptionValues {
  container?: string;
  host?: boolean;
  'containers-only'?: boolean;
  pid?: string;
  comm?: string;
  match?: string;
  pod?: string;
  namespace?: string;
  image?: string;
  since?: string;
  until?: string;
  type?: string;
}

/** The filter the options say; a usage error names the option that is wrong. */
export function filterFromOptions(values: FilterOptionValues, now: number): EventFilter {
  const filter: EventFilter = {};
  if (values.since !== undefined) filter.since = timeOption('--since', values.since, now);
  if (values.until !== undefined) filter.until = timeOption('--until', values.until, now);
  if (filter.since !== undefined && filter.until !== undefined && filter.since > filter.until) {
    throw new UsageError('--since is after --until: the time range is empty');
  }
  if (values.type !== undefined) filter.types = parseEventTypes(values.type, '--type');
  if (values.container !== undefined) {
    if (values.container === 'host') throw new UsageError('--container takes a container ID prefix; for host processes use --host');
    filter.container = nonEmpty('--container', values.container);
  }
  if (values.host && values['containers-only']) throw new UsageError('--host and --containers-only exclude each other');
  if (values.host && filter.container !== undefined) throw new UsageError('--host and --container exclude each other');
  if (values.host) filter.scope = 'host';
  if (values['containers-only']) filter.scope = 'containers';
  if (values.pid !== undefined) filter.pid = integerOption('--pid', values.pid, 0);
  if (values.comm !== undefined) filter.comm = nonEmpty('--comm', values.comm);
  if (values.match !== undefined) filter.match = nonEmpty('--match', values.match);
  if (values.pod !== undefined) filter.pod = nonEmpty('--pod', values.pod);
  if (values.namespace !== undefined) filter.namespace = nonEmpty('--namespace', values.namespace);
  if (values.image !== undefined) filter.image = nonEmpty('--image', values.image);
  if (values.host && (filter.pod !== undefined || filter.namespace !== undefined || filter.image !== undefined)) {
    throw new UsageError('--host and --pod/--namespace/--image exclude each other');
  }
  return filter;
}

function timeOption(flag: string, text: string, now: number): number {
  try {
    return parseTimeArg(text, now);
  } catch (e) {
    throw new UsageError(`${flag}: ${(e as Error).message}`);
  }
}

export function integerOption(flag: string, text: string, min: number): number {
  if (!/^\d+$/.test(text.trim()) || Number(text) < min || !Number.isSafeInteger(Number(text))) {
    throw new UsageError(`${flag} must be an integer >= ${min}, got "${text}"`);
  }
  return Number(text);
}

function nonEmpty(flag: string, text: string): string {
  if (text === '') throw new UsageError(`${flag} must not be empty`);
  return text;
}

/** A duration option in ms, inside its documented range; anything else is a usage error naming the option. */
export function durationOption(flag: string, text: string, range: Range): number {
  let ms: number;
  try {
    ms = parseDurationMs(text);
  } catch (e) {
    throw new UsageError(`${flag}: ${(e as Error).message}`);
  }
  if (!(ms >= range.min && ms <= range.max)) throw new UsageError(`${flag} must be ${range.text}, got "${text}"`);
  return ms;
}
