/** Containers running test/helpers/memory-holder.c (static): a marker on the heap, MiB of filler, extra threads. */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { podman, TEST_IMAGE, uniqueName } from './podman';

export interface Holder {
  id: string;
  pid: number;
  /** The filler mapping's address. */
  filler: bigint;
  marker: string;
}

/** Builds the holder into binDir (mounted read-only into its containers). */
export function buildHolder(binDir: string): void {
  execFileSync('cc', ['-static', '-O2', '-pthread', '-o', path.join(binDir, 'memory-holder'), path.join(__dirname, 'memory-holder.c')]);
}

/** Starts a container running the holder; its ID is pushed to `containers` (for the caller's cleanup) before it is waited for. */
export async function startHolder(binDir: string, mib: number, threads: number, containers: string[], prefix = 'amber-memory'): Promise<Holder> {
  const suffix = randomBytes(8).toString('hex');
  const id = await podman('run', '-d', '--name', uniqueName(prefix), '-v', `${binDir}:/amber:ro`, TEST_IMAGE, '/amber/memory-holder', 'AMBERMARK', suffix, String(mib), String(threads));
  containers.push(id);
  const pid = Number(await podman('inspect', '-f', '{{.State.Pid}}', id));
  const deadline = Date.now() + 30_000;
  let logs = '';
  while (!(logs = await podman('logs', id)).startsWith('ready')) {
    if (Date.now() > deadline) throw new Error(`memory-holder did not start: ${logs}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { id, pid, filler: BigInt(logs.split(/\s+/)[1] === '(nil)' ? 0 : logs.split(/\s+/)[1]), marker: `AMBERMARK-${suffix}` };
}

/** gdb in batch mode on a core, running `commands`. */
export function gdb(core: string, ...commands: string[]): string {
  return execFileSync('gdb', ['-batch', '-nx', '-c', core, ...commands.flatMap((c) => ['-ex', c])], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
