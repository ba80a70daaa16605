/** What the kernel has loaded, from bpftool: to check that Amber leaves nothing behind. */
import { execFileSync } from 'node:child_process';

/** Names of loaded BPF programs that are Amber's (their names start with amber_). */
export function amberProgramsLoaded(): string[] {
  const progs = JSON.parse(execFileSync('bpftool', ['--json', 'prog', 'show'], { encoding: 'utf8' })) as { name?: string }[];
  return progs.map((p) => p.name ?? '').filter((n) => n.startsWith('amber_'));
}

/**
 * Waits until exactly `count` Amber programs are loaded (freeing follows the
 * last fd's close by an RCU grace period); returns their names.
 */
export async function waitForAmberPrograms(count: number, timeoutMs = 5000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const loaded = amberProgramsLoaded();
    if (loaded.length === count || Date.now() > deadline) return loaded;
    await new Promise((r) => setTimeout(r, 100));
  }
}
