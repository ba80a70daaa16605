/** Containers running the memory holder (bench/memory-holder.ts), and gdb on their cores. */
import { execFileSync } from 'node:child_process';

export { buildHolder, type Holder, startHolder } from '../../bench/memory-holder';

/** gdb in batch mode on a core, running `commands`. */
export function gdb(core: string, ...commands: string[]): string {
  return execFileSync('gdb', ['-batch', '-nx', '-c', core, ...commands.flatMap((c) => ['-ex', c])], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
