/** The storms the benches run (bench/workloads/*.c), compiled on first use, and how to time a child. */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '../..');
export const WORK = path.join(ROOT, 'build/bench');

/** Compiles open-storm, exec-storm and syscall-storm into build/bench; returns their paths. */
export function compileWorkloads(): { openStorm: string; execStorm: string; syscallStorm: string } {
  fs.mkdirSync(WORK, { recursive: true });
  for (const name of ['open-storm', 'exec-storm', 'syscall-storm']) {
    execFileSync('cc', ['-O2', '-o', path.join(WORK, name), path.join(ROOT, 'bench/workloads', `${name}.c`)]);
  }
  return {
    openStorm: path.join(WORK, 'open-storm'),
    execStorm: path.join(WORK, 'exec-storm'),
    syscallStorm: path.join(WORK, 'syscall-storm'),
  };
}

/** Runs a command to completion; onPid gets its pid as soon as it is spawned. */
export function runChild(
  cmd: string,
  args: string[],
  cwd?: string,
  onPid?: (pid: number) => void,
): Promise<{ pid: number; seconds: number }> {
  return new Promise((resolve, reject) => {
    const start = process.hrtime.bigint();
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'ignore', 'inherit'] });
    onPid?.(child.pid!);
    child.on('error', reject);
    child.on('exit', (code) => {
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      if (code !== 0) reject(new Error(`${cmd} exited with ${code}`));
      else resolve({ pid: child.pid!, seconds });
    });
  });
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}
