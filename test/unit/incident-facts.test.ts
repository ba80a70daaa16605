import { describe, expect, it } from 'vitest';
import { capabilityNames, findServiceAccountToken, hostPathOf, sensitiveMounts } from '../../src/incident/exposure';
import {
  envRedactor,
  parseEnviron,
  parseInetTable,
  parseMountinfo,
  parseProcNetAddress,
  parseUnixTable,
  renderProcessTree,
  DEFAULT_PROCESS_FACTS,
  type ContainerProcessNode,
} from '../../src/incident/process-facts';

describe('process facts parsers', () => {
  it('decodes /proc/net addresses in host byte order', () => {
    expect(parseProcNetAddress('0100007F:1F90')).toEqual({ address: '127.0.0.1', port: 8080 });
    expect(parseProcNetAddress('00000000000000000000000001000000:0035')).toEqual({ address: '::1', port: 53 });
    expect(parseProcNetAddress('0000000000000000FFFF00000100007F:01BB')).toEqual({ address: '::ffff:127.0.0.1', port: 443 });
    expect(parseProcNetAddress('B80D0120000000000000000001000000:0050')).toEqual({ address: '2001:db8::1', port: 80 });
    expect(parseProcNetAddress('zz:1')).toBeNull();
    expect(parseProcNetAddress('0100007F')).toBeNull();
  });

  it('parses tcp and udp tables, skipping the header and malformed lines, bounded', () => {
    const tcp = [
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
      '   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0',
      '   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1',
      'garbage line',
    ].join('\n');
    const { sockets, truncated } = parseInetTable(tcp, 'tcp', 10);
    expect(truncated).toBe(false);
    expect(sockets.map((s) => [s.localAddress, s.localPort, s.remoteAddress, s.remotePort, s.state, s.inode])).toEqual([
      ['127.0.0.1', 8080, '0.0.0.0', 0, 'LISTEN', 4242],
      ['127.0.0.1', 8080, '127.0.0.1', 50000, 'ESTABLISHED', 4243],
    ]);
    expect(parseInetTable(tcp, 'tcp', 1)).toMatchObject({ truncated: true, sockets: [{ inode: 4242 }] });
    const udp = '  sl  local_address rem_address   st ...\n  12: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0 0';
    expect(parseInetTable(udp, 'udp', 10).sockets[0]).toMatchObject({ protocol: 'udp', localPort: 68, state: 'UNCONN', type: 'dgram' });
  });

  it('parses unix sockets: listening, abstract, unnamed, paths with spaces', () => {
    const text = [
      'Num       RefCount Protocol Flags    Type St Inode Path',
      '0000000000000000: 00000002 00000000 00010000 0001 01 1001 /run/my app.sock',
      '0000000000000000: 00000002 00000000 00000000 0002 01 1002 @abstract',
      '0000000000000000: 00000003 00000000 00000000 0001 03 1003',
    ].join('\n');
    expect(parseUnixTable(text, 10).sockets.map((s) => [s.state, s.type, s.inode, s.path])).toEqual([
      ['LISTEN', 'stream', 1001, '/run/my app.sock'],
      ['UNCONNECTED', 'dgram', 1002, '@abstract'],
      ['CONNECTED', 'stream', 1003, ''],
    ]);
  });

  it('redacts by glob, case-insensitively, and keeps an entry without "="', () => {
    const redact = envRedactor(DEFAULT_PROCESS_FACTS.redactEnv);
    const env = parseEnviron(Buffer.from('aws_region=eu\0Github_Token=t\0NOVALUE\0KEEP=a=b\0', 'latin1'), redact);
    expect(env).toEqual([
      { name: 'aws_region', value: '[redacted]', redacted: true },
      { name: 'Github_Token', value: '[redacted]', redacted: true },
      { name: 'NOVALUE', value: '', redacted: false },
      { name: 'KEEP', value: 'a=b', redacted: false },
    ]);
    // a redacted value never survives, not even as raw bytes
    expect(parseEnviron(Buffer.from('PASSWORD=\xff\0', 'latin1'), redact)).toEqual([{ name: 'PASSWORD', value: '[redacted]', redacted: true }]);
  });

  it('names capabilities by bit, unknown bits by number', () => {
    expect(capabilityNames(0x00000000a80425fbn)).toHaveLength(14);
    expect(capabilityNames((1n << 21n) | (1n << 45n))).toEqual(['CAP_SYS_ADMIN', 'CAP_45']);
  });

  it('renders a tree with escaped fields', () => {
    const leaf = (pid: number, nspid: number, args: string[]): ContainerProcessNode => ({ pid, ppid: 10, nspid, comm: 'x\x1b[2J', exePath: '', args, children: [] });
    const tree: ContainerProcessNode[] = [
      { pid: 10, ppid: 1, nspid: 1, comm: 'init', exePath: '/init', args: ['/init'], children: [{ ...leaf(11, 2, ['a b']), children: [leaf(13, 4, [])] }, leaf(12, 3, ["it's"])] },
    ];
    expect(renderProcessTree(tree)).toBe(
      [
        '[1] init  pid 10  /init  /init',
        "├── [2] x\\x1b[2J  pid 11  -  'a b'",
        '│   └── [4] x\\x1b[2J  pid 13  -',
        "└── [3] x\\x1b[2J  pid 12  -  'it'\\''s'",
        '',
      ].join('\n'),
    );
    expect(renderProcessTree([])).toBe('');
  });
});

const HOST = parseMountinfo(
  [
    '22 1 254:0 / / rw,relatime - ext4 /dev/vda rw',
    '23 22 0:21 / /run rw,nosuid - tmpfs tmpfs rw',
    '24 22 0:22 / /sys rw,nosuid - sysfs sysfs rw',
    '25 22 254:1 / /var/lib/kubelet rw - ext4 /dev/vdb rw',
    '26 23 0:30 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w',
  ].join('\n'),
);

function container(lines: string[]) {
  return parseMountinfo(['100 90 0:30 / / rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w', ...lines].join('\n'));
}

describe('sensitive mounts', () => {
  it('maps a mount to the host path it shows', () => {
    const [, etc] = container(['101 100 254:0 /etc /host-etc ro - ext4 /dev/vda rw']);
    expect(hostPathOf(etc, HOST)).toBe('/etc');
    const [root] = container([]);
    expect(hostPathOf(root, HOST)).toBe('/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs');
    const [, tmp] = container(['101 100 0:99 / /tmp rw - tmpfs tmpfs rw']);
    expect(hostPathOf(tmp, HOST)).toBeNull();
  });

  it('names the host root, /etc, a runtime socket, kubelet, a dir holding them, and a plain hostPath; skips the runtime own files', () => {
    const mounts = container([
      '101 100 254:0 / /host rw - ext4 /dev/vda rw',
      '102 101 0:21 / /host/run rw - tmpfs tmpfs rw',
      '103 100 254:0 /etc /host-etc ro - ext4 /dev/vda rw',
      '104 100 0:21 /containerd/containerd.sock /run/containerd/containerd.sock rw - tmpfs tmpfs rw',
      '105 100 254:1 / /kubelet rw - ext4 /dev/vdb rw',
      '106 100 254:0 /var/lib /varlib ro - ext4 /dev/vda rw',
      '107 100 254:0 /srv/data /data rw - ext4 /dev/vda rw',
      '108 100 254:1 /pods/uid/etc-hosts /etc/hosts rw - ext4 /dev/vdb rw',
      '109 100 0:23 / /proc rw - proc proc rw',
      '110 109 0:23 /sys /proc/sys ro - proc proc rw',
      '111 100 0:24 / /sys ro - sysfs sysfs ro',
    ]);
    expect(sensitiveMounts(mounts, HOST)).toEqual([
      { path: '/host', source: '/', reason: "the host's root filesystem", writable: true },
      { path: '/host-etc', source: '/etc', reason: "the host's /etc: accounts, password hashes, cron, runtime and kubelet configuration", writable: false },
      {
        path: '/run/containerd/containerd.sock',
        source: '/run/containerd/containerd.sock',
        reason: 'container runtime socket: whoever can write to it controls every container on the host',
        writable: true,
      },
      { path: '/kubelet', source: '/var/lib/kubelet', reason: "kubelet's state: every pod's volumes and service-account tokens", writable: true },
      {
        path: '/varlib',
        source: '/var/lib',
        reason: "holds kubelet's state: every pod's volumes and service-account tokens; a container runtime's storage: every container's files",
        writable: false,
      },
      { path: '/data', source: '/srv/data', reason: 'a host path mounted in (hostPath-style bind mount)', writable: true },
    ]);
  });

  it('finds a projected token only when the token is there', () => {
    const mounts = container(['101 100 254:1 /pods/u/volumes/kubernetes.io~projected/kube-api-access-x /var/run/secrets/kubernetes.io/serviceaccount ro - tmpfs tmpfs rw']);
    // the test's own root has no such file
    expect(findServiceAccountToken(mounts, HOST, '/')).toEqual({ mounted: false });
  });
});
