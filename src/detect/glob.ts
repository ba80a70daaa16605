/**
 * Rule globs: `*` any run of characters (also "/" and "."), `?` one
 * character, everything else literal. One regular expression per list, so a
 * field is tested once whatever the list's length. Deliberately small: a
 * rule reads the same for a path, an image reference and a DNS name.
 */
export type StringMatcher = (s: string) => boolean;

export function compileGlobs(globs: readonly string[]): StringMatcher {
  const exact = new Set<string>();
  const patterns: string[] = [];
  for (const g of globs) {
    if (!/[*?]/.test(g)) exact.add(g);
    else patterns.push(globToRegexSource(g));
  }
  if (patterns.length === 0) return (s) => exact.has(s);
  const re = new RegExp(`^(?:${patterns.join('|')})$`, 's');
  if (exact.size === 0) return (s) => re.test(s);
  return (s) => exact.has(s) || re.test(s);
}

function globToRegexSource(glob: string): string {
  let out = '';
  for (const c of glob) {
    if (c === '*') out += '.*';
    else if (c === '?') out += '.';
    else out += c.replace(/[\\^$.|+()[\]{}]/g, '\\$&');
  }
  return out;
}
