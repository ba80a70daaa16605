/**
 * Rule globs: `*` any run of characters (also "/" and "."), `?` one
 * character, everything else literal. Deliberately small: a rule reads the
 * same for a path, an image reference and a DNS name. The common forms are
 * matched without a regular expression (measured: a `.*\.pool\.com`
 * alternation cost more than the rest of a DNS event's rules): exact names
 * by a Set, `lit*` by startsWith, `*lit` by endsWith, `*lit*` by includes;
 * anything else by a regular expression, tried only when its literal prefix matches.
 */
export type StringMatcher = (s: string) => boolean;

export function compileGlobs(globs: readonly string[]): StringMatcher {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  const suffixes: string[] = [];
  const infixes: string[] = [];
  /** Other globs: a regular expression, tried only on strings with its literal prefix. */
  const patterns: Array<{ prefix: string; re: RegExp }> = [];
  for (const g of globs) {
    const inner = g.slice(1, -1);
    if (!/[*?]/.test(g)) exact.add(g);
    else if (g === '*') return () => true;
    else if (g.endsWith('*') && !/[*?]/.test(g.slice(0, -1))) prefixes.push(g.slice(0, -1));
    else if (g.startsWith('*') && !/[*?]/.test(g.slice(1))) suffixes.push(g.slice(1));
    else if (g.length > 2 && g.startsWith('*') && g.endsWith('*') && !/[*?]/.test(inner)) infixes.push(inner);
    else patterns.push({ prefix: g.slice(0, g.search(/[*?]/)), re: new RegExp(`^${globToRegexSource(g)}$`, 's') });
  }
  const nr = patterns.length;
  const np = prefixes.length;
  const ns = suffixes.length;
  const ni = infixes.length;
  const hasExact = exact.size > 0;
  return (s) => {
    if (hasExact && exact.has(s)) return true;
    for (let i = 0; i < ns; i++) if (s.endsWith(suffixes[i])) return true;
    for (let i = 0; i < np; i++) if (s.startsWith(prefixes[i])) return true;
    for (let i = 0; i < ni; i++) if (s.includes(infixes[i])) return true;
    for (let i = 0; i < nr; i++) if (s.startsWith(patterns[i].prefix) && patterns[i].re.test(s)) return true;
    return false;
  };
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
