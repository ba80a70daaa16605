/** Command-line argument errors (exit code 2) and the parsing the commands share. */
import { EVENT_TYPES, type EventType } from '../sensor/events';

export class UsageError extends Error {
  override name = 'UsageError';
}

/** "exec,open" → the types; "all" when allowAll. */
export function parseEventTypes(text: string, flag: string, allowAll = false): EventType[] {
  if (allowAll && text === 'all') return [...EVENT_TYPES];
  const types = text.split(',').map((t) => t.trim()).filter(Boolean);
  if (types.length === 0) throw new UsageError(`${flag} needs at least one event type`);
  for (const t of types) {
    if (!(EVENT_TYPES as readonly string[]).includes(t)) {
      throw new UsageError(`${flag}: unknown event type "${t}" (known: ${EVENT_TYPES.join(', ')}${allowAll ? ', or all' : ''})`);
    }
  }
  return types as EventType[];
}
