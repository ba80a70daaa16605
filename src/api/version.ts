/** Amber's version, from the package.json above this file (src/ under vitest, dist/src/ when built). */
import fs from 'node:fs';
import path from 'node:path';

function findVersion(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'amber' && pkg.version) return pkg.version;
    } catch {
      // not here: look further up
    }
  }
  return 'unknown';
}

export const AMBER_VERSION = findVersion();
