/**
 * The API over TCP: mutual TLS with certificates this test makes (openssl),
 * a bearer token on top, refusals of everyone else, and certificates rotated
 * on disk picked up without a restart. Loopback only.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AmberClient } from '../../src/api/gen/amber';
import { CLI, type RunningAgent, startAgentProcess, stopAgentProcess } from '../helpers/agent';

const execFileP = promisify(execFile);

interface Pki {
  ca: string;
  cert: string;
  key: string;
}

/** A CA, and a certificate it signs for `cn` (with 127.0.0.1 as its address when it is a server's). */
function makeCa(dir: string, name: string): { ca: string; caKey: string } {
  const ca = path.join(dir, `${name}-ca.crt`);
  const caKey = path.join(dir, `${name}-ca.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', caKey, '-out', ca, '-subj', `/CN=${name}-ca`, '-days', '1'], { stdio: 'ignore' });
  return { ca, caKey };
}

function makeCert(dir: string, authority: { ca: string; caKey: string }, name: string, server: boolean): Pki {
  const key = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const cert = path.join(dir, `${name}.crt`);
  const ext = path.join(dir, `${name}.ext`);
  fs.writeFileSync(ext, server ? 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' : 'extendedKeyUsage=clientAuth\n');
  execFileSync('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${name}`], { stdio: 'ignore' });
  execFileSync('openssl', ['x509', '-req', '-in', csr, '-CA', authority.ca, '-CAkey', authority.caKey, '-CAcreateserial', '-out', cert, '-days', '1', '-extfile', ext], { stdio: 'ignore' });
  return { ca: authority.ca, cert, key };
}

async function amber(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileP(process.execPath, [CLI, ...args]);
    return { code: 0, stdout, stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

/** A Status call with the given credentials; resolves with its status code. */
function statusCode(target: string, creds: grpc.ChannelCredentials, token?: string): Promise<grpc.status> {
  const client = new AmberClient(target, creds);
  const md = new grpc.Metadata();
  if (token !== undefined) md.set('authorization', `Bearer ${token}`);
  return new Promise((resolve) => {
    client.status({}, md, { deadline: Date.now() + 5000 }, (err) => {
      client.close();
      resolve(err ? err.code : grpc.status.OK);
    });
  });
}

describe('the API over TCP with mutual TLS', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-tls-'));
  const dataDir = path.join(dir, 'data');
  const live = path.join(dir, 'live');
  let agent: RunningAgent | undefined;
  let target = '';
  let client1: Pki;
  let other: Pki;
  const token = 'amber-test-token-0123456789abcdef';
  const tokenFile = path.join(dir, 'token');

  beforeAll(async () => {
    fs.mkdirSync(live);
    const ca1 = makeCa(dir, 'one');
    const server1 = makeCert(dir, ca1, 'agent-one', true);
    client1 = makeCert(dir, ca1, 'client-one', false);
    other = makeCert(dir, makeCa(dir, 'other'), 'client-other', false);
    // the files the agent watches, as a mounted secret would be
    fs.copyFileSync(ca1.ca, path.join(live, 'ca.crt'));
    fs.copyFileSync(server1.cert, path.join(live, 'tls.crt'));
    fs.copyFileSync(server1.key, path.join(live, 'tls.key'));
    fs.writeFileSync(tokenFile, `${token}\n`);
    const config = path.join(dir, 'amber.yaml');
    fs.writeFileSync(
      config,
      [
        'api:',
        `  listen: ["unix://${dataDir}-run/amber.sock", "tcp://127.0.0.1:0"]`,
        '  tls:',
        `    ca: ${live}/ca.crt`,
        `    cert: ${live}/tls.crt`,
        `    key: ${live}/tls.key`,
        '    refreshInterval: 500ms',
        `  tokenFile: ${tokenFile}`,
        '',
      ].join('\n'),
    );
    agent = await startAgentProcess(dataDir, { AMBER_API_LISTEN: undefined }, ['--config', config, '--node-name', 'node-tls']);
    const m = /"api":\["unix:[^"]*","tcp:\/\/(127\.0\.0\.1:\d+)"\]/.exec(agent.logs());
    if (!m) throw new Error(`no TCP address in the agent's log:\n${agent.logs()}`);
    target = m[1];
  });
  afterAll(async () => {
    await stopAgentProcess(agent);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(`${dataDir}-run`, { recursive: true, force: true });
  });

  const tlsArgs = (p: Pki) => ['--tls-ca', p.ca, '--tls-cert', p.cert, '--tls-key', p.key];

  it('amber status and buffer query work over TCP with a client certificate and the token', async () => {
    const run = await amber('status', '--server', target, ...tlsArgs(client1), '--token-file', tokenFile, '-o', 'json');
    expect(run.stderr).toBe('');
    expect(JSON.parse(run.stdout)).toMatchObject({ node: 'node-tls', sensor: { state: 'running' } });
    const args = ['--type', 'exec', '--until', String(Date.now() * 1e6), '-o', 'json'];
    const [tcp, unix] = await Promise.all([
      amber('buffer', 'query', '--server', target, ...tlsArgs(client1), '--token-file', tokenFile, ...args),
      amber('buffer', 'query', '--server', agent!.server, ...args),
    ]);
    expect(tcp.code).toBe(0);
    expect(tcp.stdout.length).toBeGreaterThan(0);
    expect(unix.stderr).toBe('');
    expect(tcp.stdout).toBe(unix.stdout);
  });

  it('refuses a client without a certificate, one from another CA, a wrong or missing token', async () => {
    const ca = fs.readFileSync(client1.ca);
    // trusts the agent's CA, presents the given certificate
    const withCert = (p: Pki) => grpc.credentials.createSsl(ca, fs.readFileSync(p.key), fs.readFileSync(p.cert));
    expect(await statusCode(target, grpc.credentials.createSsl(ca), token)).toBe(grpc.status.UNAVAILABLE);
    expect(await statusCode(target, withCert(other), token)).toBe(grpc.status.UNAVAILABLE);
    expect(await statusCode(target, withCert(client1), 'not-the-token')).toBe(grpc.status.UNAUTHENTICATED);
    expect(await statusCode(target, withCert(client1))).toBe(grpc.status.UNAUTHENTICATED);
    expect(await statusCode(target, withCert(client1), token)).toBe(grpc.status.OK);
    // plaintext to the TLS port gets nowhere
    expect(await statusCode(target, grpc.credentials.createInsecure(), token)).toBe(grpc.status.UNAVAILABLE);
    const run = await amber('status', '--server', target, ...tlsArgs(other), '--token-file', tokenFile);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/cannot reach the agent: UNAVAILABLE/);
  });

  it('incidents over TCP: the client certificate names who asked, and the archive pulls through TLS', { timeout: 180_000 }, async () => {
    const sleeper = spawn('sleep', ['300'], { stdio: 'ignore' });
    try {
      const tcp = ['--server', target, ...tlsArgs(client1), '--token-file', tokenFile];
      const r = await amber('incidents', 'trigger', '--pid', String(sleeper.pid), '--reason', 'over tcp', '--wait', '2m', ...tcp);
      expect(r.code, r.stderr).toBe(0);
      const id = r.stdout.split('\n')[0];
      const manifest = JSON.parse(fs.readFileSync(path.join(dataDir, 'incidents', id, 'manifest.json'), 'utf8')) as { trigger: unknown };
      expect(manifest.trigger).toMatchObject({ kind: 'manual', reason: 'over tcp', requestedBy: 'client-one' });
      const out = path.join(dir, 'pulled');
      fs.mkdirSync(out);
      const pull = await amber('incidents', 'pull', id, '--out', out, ...tcp);
      expect(pull.code, pull.stderr).toBe(0);
      const sha256 = (f: string) => createHash('sha256').update(fs.readFileSync(f)).digest('hex');
      expect(sha256(path.join(out, `${id}.tar.gz`))).toBe(sha256(path.join(dataDir, 'incidents', `${id}.tar.gz`)));
    } finally {
      sleeper.kill('SIGKILL');
    }
  });

  it('picks up certificates rotated on disk without a restart', async () => {
    const ca2 = makeCa(dir, 'two');
    const server2 = makeCert(dir, ca2, 'agent-two', true);
    const client2 = makeCert(dir, ca2, 'client-two', false);
    for (const [from, to] of [
      [ca2.ca, 'ca.crt'],
      [server2.cert, 'tls.crt'],
      [server2.key, 'tls.key'],
    ]) {
      fs.copyFileSync(from, path.join(live, `${to}.new`));
      fs.renameSync(path.join(live, `${to}.new`), path.join(live, to));
    }
    const creds = (p: Pki) => grpc.credentials.createSsl(fs.readFileSync(p.ca), fs.readFileSync(p.key), fs.readFileSync(p.cert));
    const deadline = Date.now() + 15_000;
    let code = await statusCode(target, creds(client2), token);
    while (code !== grpc.status.OK && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      code = await statusCode(target, creds(client2), token);
    }
    expect(code).toBe(grpc.status.OK);
    // the old CA's clients are out
    expect(await statusCode(target, grpc.credentials.createSsl(fs.readFileSync(ca2.ca), fs.readFileSync(client1.key), fs.readFileSync(client1.cert)), token)).toBe(
      grpc.status.UNAVAILABLE,
    );
    expect(agent!.child.exitCode).toBeNull();
  });

  it('an agent with a TCP listener and no TLS refuses to start, saying why', async () => {
    const run = await amber('agent', '--data-dir', path.join(dir, 'data-plain'), '--listen', 'tcp://127.0.0.1:0');
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('api.listen tcp://127.0.0.1:0: a TCP listener needs mutual TLS (api.tls: ca, cert, key)');
  });
});
