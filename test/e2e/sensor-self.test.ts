/**
 * ignoreSelf inside a PID namespace, where process.pid is not the kernel's
 * tgid: the built sensor runs under `unshare --pid --fork --kill-child`, with
 * the host's /proc and with its own (--mount-proc, as in a pod without
 * hostPID). Its own opens must be absent, a host process's present.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const HELPER = path.resolve(__dirname, '../helpers/self-ignore.cjs');

interface Seen {
  /** process.pid inside the namespace */
  pid: number;
  /** pids of the opens of its own marker */
  self: number[];
  /** pids of the opens of the host's marker */
  host: number[];
}

/** Runs the helper in a new PID namespace; opens hostMarker from this (host) process once it is ready. */
function runInPidNamespace(mountProc: boolean, ignoreSelf: boolean, selfMarker: string, hostMarker: string): Promise<Seen & { hostPid: number }> {
  return new Promise((resolve, reject) => {
    const args = ['--pid', '--fork', '--kill-child', ...(mountProc ? ['--mount-proc'] : []), process.execPath, HELPER, selfMarker, hostMarker, ignoreSelf ? '1' : '0'];
    const child = spawn('unshare', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let hostPid = 0;
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (hostPid === 0 && stdout.includes('ready\n')) {
        // node is unshare's forked child: PID 1 inside, this pid on the host
        hostPid = Number(fs.readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim());
        fs.closeSync(fs.openSync(hostMarker, 'r'));
      }
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`unshare ${args.join(' ')} exited with ${code}: ${stderr}`));
      const last = stdout.trim().split('\n').pop()!;
      resolve({ ...(JSON.parse(last) as Seen), hostPid });
    });
  });
}

describe('ignoreSelf in a PID namespace', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-self-'));
  const hostMarker = path.join(tmp, 'host-marker');
  fs.writeFileSync(hostMarker, 'host');

  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  for (const mountProc of [false, true]) {
    const where = mountProc ? 'with its own /proc' : "with the host's /proc";

    it(`leaves out the sensor's own opens and keeps the host's (${where})`, async () => {
      const selfMarker = path.join(tmp, `self-${mountProc}`);
      fs.writeFileSync(selfMarker, 'self');
      const seen = await runInPidNamespace(mountProc, true, selfMarker, hostMarker);
      expect(seen.pid).toBe(1);
      expect(seen.hostPid).toBeGreaterThan(1);
      expect(seen.self).toEqual([]);
      expect(seen.host).toEqual([process.pid]);
    });

    it(`records them without ignoreSelf, under the host pid, not the namespace's 1 (${where})`, async () => {
      const selfMarker = path.join(tmp, `control-${mountProc}`);
      fs.writeFileSync(selfMarker, 'self');
      const seen = await runInPidNamespace(mountProc, false, selfMarker, hostMarker);
      expect(seen.pid).toBe(1);
      expect(seen.self).toEqual([seen.hostPid, seen.hostPid, seen.hostPid]);
      expect(seen.host).toEqual([process.pid]);
    });
  }
});
