/**
 * --k8s discovery against a recorded pod list served on loopback (no cluster
 * runs here): the request the client makes, and the servers it finds.
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { discoverAgents, K8S_DEFAULTS } from '../../src/api/k8s';

const PODS = fs.readFileSync(path.join(__dirname, '../fixtures/k8s/pods.json'));

describe('--k8s discovery', () => {
  let server: http.Server;
  const requests: { url: string; auth: string | undefined }[] = [];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'amber-k8s-'));
  let kubeconfig = '';

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      requests.push({ url: req.url ?? '', auth: req.headers.authorization });
      if ((req.url ?? '').startsWith('/api/v1/namespaces/amber/pods')) res.writeHead(200, { 'content-type': 'application/json' }).end(PODS);
      else res.writeHead(404, { 'content-type': 'application/json' }).end('{"kind":"Status","code":404}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    kubeconfig = path.join(dir, 'kubeconfig');
    fs.writeFileSync(
      kubeconfig,
      [
        // plain HTTP on loopback: the client allows it only with TLS verification off
        'apiVersion: v1',
        'kind: Config',
        'clusters: [{ name: test, cluster: { server: "http://127.0.0.1:' + port + '", insecure-skip-tls-verify: true } }]',
        'users: [{ name: viewer, user: { token: recorded-test-token } }]',
        'contexts: [{ name: test, context: { cluster: test, user: viewer } }]',
        'current-context: test',
        '',
      ].join('\n'),
    );
  });
  afterAll(() => {
    server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('lists the running agent pods by label and names their servers by node', async () => {
    const agents = await discoverAgents({ ...K8S_DEFAULTS, kubeconfig });
    expect(agents).toEqual([
      { node: 'node-a', pod: 'amber-9mq4d', server: '10.244.0.9:7443' },
      { node: 'node-b', pod: 'amber-x7k2p', server: '10.244.1.17:7443' },
      { node: 'node-d', pod: 'amber-v6', server: '[fd00:10:244::5]:7443' },
    ]);
    expect(requests).toHaveLength(1);
    const url = new URL(requests[0].url, 'http://x');
    expect(url.pathname).toBe('/api/v1/namespaces/amber/pods');
    expect(url.searchParams.get('labelSelector')).toBe('app.kubernetes.io/name=amber');
    expect(requests[0].auth).toBe('Bearer recorded-test-token');
  });

  it('says what failed when the namespace is not there', async () => {
    await expect(discoverAgents({ ...K8S_DEFAULTS, namespace: 'nope', kubeconfig })).rejects.toThrow(/404/);
  });
});
