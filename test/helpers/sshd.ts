/**
 * Debian's OpenSSH server run by the test as its own sshd on 127.0.0.1: a
 * private config, its own host key and client key, SFTP only (internal-sftp)
 * chrooted into a directory that sshd requires root-owned all the way up, so
 * it lives under /srv (not /tmp) and is removed at the end. Stopped by pid:
 * the listener and the per-connection processes it forked.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { freePort } from './s3rver';

const SSHD = '/usr/sbin/sshd';

export class TestSshd {
  readonly base = `/srv/amber-test-sftp-${randomBytes(6).toString('hex')}`;
  readonly jail = path.join(this.base, 'jail');
  /** The upload directory as the SFTP client sees it (inside the chroot). */
  readonly remoteDir = '/upload';
  readonly clientKeyFile = path.join(this.base, 'client_key');
  readonly otherKeyFile = path.join(this.base, 'other_key');
  hostKeyFingerprint = '';
  otherKeyFingerprint = '';
  private child: ChildProcess | undefined;
  port = 0;

  static async start(): Promise<TestSshd> {
    const s = new TestSshd();
    try {
      await s.setUp();
      await s.start();
    } catch (err) {
      await s.cleanup();
      throw err;
    }
    return s;
  }

  /** The upload directory on this machine. */
  get uploadDir(): string {
    return path.join(this.jail, 'upload');
  }

  private async setUp(): Promise<void> {
    mkdirSync(this.base, { mode: 0o755 });
    mkdirSync(this.jail, { mode: 0o755 });
    mkdirSync(this.uploadDir, { mode: 0o700 });
    // the privilege separation dir the distribution's service unit would create
    mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
    const keygen = (file: string) => execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'amber-test', '-f', file]);
    const fingerprint = (pub: string) => execFileSync('ssh-keygen', ['-lf', pub]).toString().split(' ')[1];
    keygen(path.join(this.base, 'host_key'));
    keygen(this.clientKeyFile);
    keygen(this.otherKeyFile);
    this.hostKeyFingerprint = fingerprint(path.join(this.base, 'host_key.pub'));
    this.otherKeyFingerprint = fingerprint(`${this.otherKeyFile}.pub`);
    writeFileSync(path.join(this.base, 'authorized_keys'), readFileSync(`${this.clientKeyFile}.pub`), { mode: 0o600 });
    this.port = await freePort();
    writeFileSync(
      path.join(this.base, 'sshd_config'),
      [
        'ListenAddress 127.0.0.1',
        `HostKey ${this.base}/host_key`,
        `PidFile ${this.base}/sshd.pid`,
        `AuthorizedKeysFile ${this.base}/authorized_keys`,
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'AllowUsers root',
        `ChrootDirectory ${this.jail}`,
        'ForceCommand internal-sftp',
        'Subsystem sftp internal-sftp',
        'AllowTcpForwarding no',
        'X11Forwarding no',
        '',
      ].join('\n'),
    );
  }

  async start(): Promise<void> {
    if (this.child) throw new Error('sshd already running');
    const child = spawn(SSHD, ['-D', '-e', '-f', path.join(this.base, 'sshd_config'), '-p', String(this.port)], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child = child;
    let err = '';
    await new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (d: Buffer) => {
        err += d.toString();
        if (err.includes(`Server listening on 127.0.0.1 port ${this.port}`)) resolve();
      });
      child.once('exit', (code) => reject(new Error(`sshd exited with ${code}: ${err}`)));
    });
  }

  /** Kills the sessions it forked, then the listener, each by pid. */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    for (const pid of descendants(child.pid!)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    process.kill(child.pid!, 'SIGKILL');
    await exited;
  }

  async cleanup(): Promise<void> {
    await this.stop();
    rmSync(this.base, { recursive: true, force: true });
  }
}

/** Every process below `pid`, from /proc's parent links. */
function descendants(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // the command may hold spaces and parentheses: fields start after the last ')'
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parentOf.set(Number(name), ppid);
    } catch {
      // exited meanwhile
    }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [child, parent] of parentOf) {
      if (parent === p) {
        out.push(child);
        walk(child);
      }
    }
  };
  walk(pid);
  return out;
}
