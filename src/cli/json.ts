/**
 * Events as JSON lines, fast: the exact bytes of JSON.stringify(event), built
 * from a serializer per event shape instead of V8's generic walk. Recording
 * `amber trace -o json > file` under an open storm spent most of its CPU in
 * JSON.stringify; this path is what keeps JSON output from being the bottleneck.
 *
 * Exactness rules (checked byte for byte in test/unit/json.test.ts): a shape is
 * an event's own enumerable keys in order, learned from the first event of
 * that shape; a value that is not a string, a finite or non-finite number, a
 * boolean, null, undefined or an array of strings, or an event of a shape not
 * known (more than MAX_SHAPES per type), goes to JSON.stringify whole. Keys
 * are only ever used as data (JSON-quoted), never as code: events read from a
 * data dir may carry planted keys.
 */

/** Characters JSON.stringify escapes (controls, quote, backslash) or may (lone surrogates). */
const NEEDS_ESCAPE = /[\u0000-\u001f"\\\ud800-\udfff]/;

function jsonString(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : `"${s}"`;
}

/** Event timestamps (ns since the epoch) of the years 2006-2043 are doubles in [2^60, 2^61): 256 apart. */
const TS_LOW = 2 ** 60;
const TS_HIGH = 2 ** 61;

/**
 * `${n}` for a number, faster for timestamps: the text of a double is its
 * shortest decimal that reads back as the same double, padded with zeros.
 * In [2^60, 2^61) the doubles are the multiples of 256, so that decimal is the
 * multiple of the largest power of ten within 128 of the value (a value exactly
 * 128 away rounds to the even neighbour), found with integer arithmetic on the
 * seconds and nanoseconds, both exact. test/unit/json.test.ts compares it with
 * String() on millions of values.
 */
export function numberText(n: number): string {
  if (!(n >= TS_LOW && n < TS_HIGH)) return `${n}`;
  let hi = Math.floor(n / 1e9);
  let lo = n - hi * 1e9; // exact: both are multiples of 256 below 2^62
  const evenMantissa = ((lo / 256) & 1) === 0;
  for (let p = 1e9; p >= 10; p /= 10) {
    const m = Math.round(lo / p) * p;
    const d = m > lo ? m - lo : lo - m;
    if (d < 128 || (d === 128 && evenMantissa)) {
      lo = m;
      break;
    }
  }
  if (lo >= 1e9) {
    hi += 1;
    lo -= 1e9;
  } else if (lo < 0) {
    hi -= 1;
    lo += 1e9;
  }
  const digits = `${lo}`;
  return `${hi}${'000000000'.slice(digits.length)}${digits}`;
}

interface Shape {
  keys: string[];
  /** `"key":` for the first key, `,"key":` for the others. */
  heads: string[];
  /**
   * Per key, the last value serialized and its text: most fields repeat from
   * one event to the next (the process's pid, comm, namespaces, a path, the
   * flag names), and converting numbers such as a 10-digit mntns to text is
   * what costs.
   */
  lastValues: unknown[];
  lastTexts: string[];
}

/** Shapes per type: events of one type come in one or two shapes (e.g. a DNS response with latencyNs). */
const MAX_SHAPES = 8;
const shapes = new Map<unknown, Shape[]>();

function sameKeys(ev: object, keys: string[]): boolean {
  let i = 0;
  for (const k in ev) {
    if (k !== keys[i++]) return false;
  }
  return i === keys.length;
}

function shapeOf(ev: Record<string, unknown>): Shape | undefined {
  let list = shapes.get(ev.type);
  if (list) {
    for (const s of list) if (sameKeys(ev, s.keys)) return s;
  }
  if (Object.getPrototypeOf(ev) !== Object.prototype) return undefined; // class instances, toJSON, ...
  const keys: string[] = [];
  for (const k in ev) {
    if (!Object.prototype.hasOwnProperty.call(ev, k)) return undefined; // inherited enumerable keys
    keys.push(k);
  }
  if (typeof ev.type !== 'string' || ev.type.length > 64) return undefined; // only real type names get a cache entry
  if (!list) {
    if (shapes.size >= 64) return undefined;
    list = [];
    shapes.set(ev.type, list);
  }
  if (list.length >= MAX_SHAPES) return undefined;
  const shape: Shape = {
    keys,
    heads: keys.map((k, i) => `${i === 0 ? '' : ','}${JSON.stringify(k)}:`),
    lastValues: keys.map(() => undefined),
    lastTexts: keys.map(() => ''),
  };
  list.push(shape);
  return shape;
}

/** Exactly JSON.stringify(ev). */
export function eventJson(ev: object): string {
  const e = ev as Record<string, unknown>;
  const shape = shapeOf(e);
  if (!shape) return JSON.stringify(ev);
  const { keys, heads, lastValues, lastTexts } = shape;
  let out = '{';
  let first = true;
  for (let i = 0; i < keys.length; i++) {
    const v = e[keys[i]];
    let text: string;
    // same primitive (or the same array object, e.g. flag names shared per flags value) as last time: same text;
    // an array is compared by identity, so one changed in place is serialized again only if a new one is passed
    if (v === lastValues[i] && v !== undefined && !Array.isArray(v)) {
      out += first && i > 0 ? heads[i].slice(1) : heads[i];
      out += lastTexts[i];
      first = false;
      continue;
    }
    switch (typeof v) {
      case 'string':
        text = jsonString(v);
        break;
      case 'number':
        text = Number.isFinite(v) ? numberText(v) : 'null';
        break;
      case 'boolean':
        text = v ? 'true' : 'false';
        break;
      case 'undefined':
        continue; // JSON.stringify leaves the key out
      case 'object': {
        if (v === null) {
          text = 'null';
          break;
        }
        if (!Array.isArray(v)) return JSON.stringify(ev);
        text = '[';
        for (let j = 0; j < v.length; j++) {
          const item: unknown = v[j];
          if (typeof item !== 'string') return JSON.stringify(ev);
          text += j === 0 ? jsonString(item) : `,${jsonString(item)}`;
        }
        text += ']';
        break;
      }
      default:
        return JSON.stringify(ev); // functions, symbols (left out), bigints (throw): as JSON.stringify does
    }
    if (typeof v !== 'object') {
      lastValues[i] = v;
      lastTexts[i] = text;
    }
    // a left-out first key moves the comma: rare, take the head without it
    out += first && i > 0 ? heads[i].slice(1) : heads[i];
    out += text;
    first = false;
  }
  return `${out}}`;
}
