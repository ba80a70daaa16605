/** open(2) flags as names, the way strace prints them (Linux generic values: x86_64, arm64). */
const ACCESS_MODES = ['O_RDONLY', 'O_WRONLY', 'O_RDWR'] as const;

const FLAG_BITS: ReadonlyArray<readonly [number, string]> = [
  [0o100, 'O_CREAT'],
  [0o200, 'O_EXCL'],
  [0o400, 'O_NOCTTY'],
  [0o1000, 'O_TRUNC'],
  [0o2000, 'O_APPEND'],
  [0o4000, 'O_NONBLOCK'],
  [0o10000, 'O_DSYNC'],
  [0o20000, 'O_ASYNC'],
  [0o40000, 'O_DIRECT'],
  [0o100000, 'O_LARGEFILE'],
  [0o200000, 'O_DIRECTORY'],
  [0o400000, 'O_NOFOLLOW'],
  [0o1000000, 'O_NOATIME'],
  [0o2000000, 'O_CLOEXEC'],
  [0o4000000, 'O_SYNC'], // __O_SYNC; O_SYNC is __O_SYNC|O_DSYNC
  [0o10000000, 'O_PATH'],
  [0o20000000, 'O_TMPFILE'], // __O_TMPFILE; O_TMPFILE is __O_TMPFILE|O_DIRECTORY
];

const cache = new Map<number, string[]>();

/** ["O_WRONLY", "O_CREAT", ...]: the access mode first, then the bits in ascending order. */
export function openFlagNames(flags: number): string[] {
  let names = cache.get(flags);
  if (names) return names;
  const accmode = flags & 3;
  names = [accmode === 3 ? 'O_ACCMODE' : ACCESS_MODES[accmode]];
  let rest = flags & ~3;
  for (const [bit, name] of FLAG_BITS) {
    if (rest & bit) {
      names.push(name);
      rest &= ~bit;
    }
  }
  if (rest !== 0) names.push(`0x${(rest >>> 0).toString(16)}`);
  if (cache.size < 4096) cache.set(flags, names);
  return names;
}
