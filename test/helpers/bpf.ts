/**
 * What the kernel has loaded, to check that Amber leaves nothing behind. Other
 * processes on the machine may load Amber programs of their own at the same
 * time (another sensor, another test run), so the checks follow the program
 * IDs one process holds (its fds' fdinfo), not every program named amber_*.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** IDs of the BPF programs the process holds open (fds and links), from /proc/<pid>/fdinfo. */
export function programIdsHeldBy(pid: number): number[] {
  const ids = new Set<number>();
  const dir = `/proc/${pid}/fdinfo`;
  for (const fd of readdirSync(dir)) {
    let info: string;
    try {
      info = readFileSync(`${dir}/${fd}`, 'utf8');
    } catch {
      continue; // closed meanwhile
    }
    const m = /^prog_id:\s+(\d+)$/m.exec(info);
    if (m) ids.add(Number(m[1]));
  }
  return [...ids].sort((a, b) => a - b);
}

/** Names of the loaded programs with these IDs (the ones still loaded). */
export function programsLoaded(ids: readonly number[]): string[] {
  const wanted = new Set(ids);
  const progs = JSON.parse(execFileSync('bpftool', ['--json', 'prog', 'show'], { encoding: 'utf8' })) as { id: number; name?: string }[];
  return progs.filter((p) => wanted.has(p.id)).map((p) => p.name ?? '');
}

/**
 * Waits until none of these programs is loaded any more (freeing follows the
 * last fd's close by an RCU grace period); returns the names still loaded.
 */
export async function waitForProgramsGone(ids: readonly number[], timeoutMs = 5000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const loaded = programsLoaded(ids);
    if (loaded.length === 0 || Date.now() > deadline) return loaded;
    await new Promise((r) => setTimeout(r, 100));
  }
}
