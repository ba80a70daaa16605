/**
 * The overlay root of a container from /proc/<pid>/mountinfo of one of its
 * processes. The file is hostile input (a container chooses its mount points
 * and, with CAP_SYS_ADMIN inside, its mounts): every field is length-checked,
 * octal escapes are decoded, malformed lines are skipped, never thrown on.
 */

export interface OverlayRoot {
  upperdir: string;
  /** Topmost first, as overlayfs lists them. */
  lowerdirs: string[];
  workdir: string;
}

export interface MountinfoEntry {
  mountId: number;
  parentId: number;
  /** The device of the mounted filesystem, "major:minor". */
  majorMinor: string;
  root: string;
  mountPoint: string;
  /** Per-mount options (rw or ro first, then nosuid, nodev...). */
  mountOptions: string[];
  fsType: string;
  source: string;
  /** Super-block options, decoded, in order; a flag without '=' has value "". */
  superOptions: Array<[string, string]>;
}

/** Lines longer than this are skipped (PATH_MAX-sized fields, many lowerdirs still fit). */
export const MAX_MOUNTINFO_LINE = 256 * 1024;
const MAX_LOWERDIRS = 512;

/** Decodes the kernel's \ooo escapes (space, tab, newline, backslash, and '#' or ',' in some fields). */
export function unescapeMountField(s: string): string {
  if (!s.includes('\\')) return s;
  return s.replace(/\\([0-7]{3})/g, (whole, oct: string) => {
    const code = parseInt(oct, 8);
    return code <= 0xff ? String.fromCharCode(code) : whole;
  });
}

/** One mountinfo line, or null when it is not well formed. */
export function parseMountinfoLine(line: string): MountinfoEntry | null {
  if (line.length === 0 || line.length > MAX_MOUNTINFO_LINE) return null;
  const fields = line.split(' ');
  // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
  const sep = fields.indexOf('-', 6);
  if (sep < 0 || fields.length !== sep + 4) return null;
  const mountId = Number(fields[0]);
  const parentId = Number(fields[1]);
  if (!Number.isSafeInteger(mountId) || !Number.isSafeInteger(parentId) || !/^\d+:\d+$/.test(fields[2])) return null;
  const superOptions: Array<[string, string]> = [];
  for (const raw of fields[sep + 3].split(',')) {
    if (raw === '') continue;
    const eq = raw.indexOf('=');
    // values keep their own escapes until the caller splits them (overlayfs' "\:")
    superOptions.push(eq < 0 ? [unescapeMountField(raw), ''] : [unescapeMountField(raw.slice(0, eq)), raw.slice(eq + 1)]);
  }
  return {
    mountId,
    parentId,
    majorMinor: fields[2],
    root: unescapeMountField(fields[3]),
    mountPoint: unescapeMountField(fields[4]),
    mountOptions: fields[5].split(',').filter((o) => o !== ''),
    fsType: unescapeMountField(fields[sep + 1]),
    source: unescapeMountField(fields[sep + 2]),
    superOptions,
  };
}

/** Splits an overlayfs lowerdir list on ':' not escaped as "\:", decoding the rest. */
export function splitLowerdirs(raw: string): string[] {
  const dirs: string[] = [];
  let current = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i];
    if (c === '\\' && raw[i + 1] === ':') {
      current += ':';
      i++;
    } else if (c === ':') {
      dirs.push(current);
      current = '';
    } else {
      current += c;
    }
  }
  dirs.push(current);
  return dirs.filter((d) => d !== '').map(unescapeMountField);
}

/**
 * The overlay mounted at the process's root ("/"), or null when its root is
 * no overlay (e.g. a native snapshotter) or the text holds none. The last
 * mount on "/" wins: it shadows the ones before it.
 */
export function parseOverlayRoot(text: string): OverlayRoot | null {
  let root: MountinfoEntry | null = null;
  let start = 0;
  while (start < text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    // cheap pre-check before splitting: only lines mounting "/" matter
    const mark = text.indexOf(' / ', start);
    if (end - start <= MAX_MOUNTINFO_LINE && mark >= 0 && mark < end) {
      const entry = parseMountinfoLine(text.slice(start, end));
      if (entry !== null && entry.mountPoint === '/') root = entry;
    }
    start = end + 1;
  }
  if (root === null || root.fsType !== 'overlay') return null;
  let upperdir = '';
  let workdir = '';
  const lowerdirs: string[] = [];
  for (const [key, value] of root.superOptions) {
    if (key === 'upperdir') upperdir = unescapeMountField(value);
    else if (key === 'workdir') workdir = unescapeMountField(value);
    else if (key === 'lowerdir') lowerdirs.splice(0, lowerdirs.length, ...splitLowerdirs(value));
    // kernels >= 6.5 may list layers one by one
    else if (key === 'lowerdir+') lowerdirs.push(unescapeMountField(value));
    if (lowerdirs.length > MAX_LOWERDIRS) return null;
  }
  if (lowerdirs.length === 0) return null;
  return { upperdir, lowerdirs, workdir };
}
