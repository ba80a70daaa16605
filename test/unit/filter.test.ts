/** The one event filter, as every command and subscriber uses it. */
import { describe, expect, it } from 'vitest';
import { compileFilter, type EventFilter, validateFilter } from '../../src/filter';
import { CONTAINER_A, CONTAINER_B, dnsEvent, execEvent, openEvent, T0 } from '../helpers/buffer-events';

const events = [
  execEvent(T0, { pid: 1, args: ['/bin/sh', './drop.sh'], script: '/tmp/drop.sh' }),
  openEvent(T0 + 1000, { pid: 2, containerId: '', comm: 'cron', path: '/etc/crontab' }),
  dnsEvent(T0 + 2000, { pid: 3, containerId: CONTAINER_B, name: 'evil.example', answers: [{ type: 'TXT', data: '"MZXW6YTBOI======"' }] }),
  openEvent(T0 + 3000, { pid: 4, containerId: CONTAINER_A }),
];

describe('compileFilter', () => {
  it.each<[string, EventFilter, number[]]>([
    ['nothing set', {}, [1, 2, 3, 4]],
    ['types', { types: ['open'] }, [2, 4]],
    ['time range, inclusive', { since: T0 + 1000, until: T0 + 2000 }, [2, 3]],
    ['container prefix', { container: CONTAINER_A.slice(0, 4) }, [1, 4]],
    ['host only', { scope: 'host' }, [2]],
    ['containers only', { scope: 'containers' }, [1, 3, 4]],
    ['container prefix and containers only', { container: CONTAINER_B.slice(0, 3), scope: 'containers' }, [3]],
    ['pid', { pid: 3 }, [3]],
    ['comm, exact', { comm: 'cro' }, []],
    ['match in args', { match: './drop' }, [1]],
    ['match in a script path', { match: '/tmp/drop.sh' }, [1]],
    ['match in a DNS answer', { match: 'MZXW6' }, [3]],
    ['match in a DNS name', { match: 'evil' }, [3]],
    ['match in a path, combined', { match: '/etc/', scope: 'host', types: ['open'] }, [2]],
  ])('%s', (_, filter, pids) => {
    validateFilter(filter);
    expect(events.filter(compileFilter(filter)).map((e) => e.pid)).toEqual(pids);
  });

  it('does not throw on stored events that miss fields', () => {
    const partial = { type: 'exec', ts: T0, pid: 9 } as never;
    expect(compileFilter({ match: 'x', scope: 'containers' })(partial)).toBe(false);
    expect(compileFilter({ scope: 'host' })(partial)).toBe(true);
  });
});

describe('validateFilter', () => {
  it.each<[EventFilter, string]>([
    [{ since: 2, until: 1 }, 'since is after until'],
    [{ types: ['nope' as never] }, 'unknown event type "nope"'],
    [{ container: '' }, 'container must not be empty'],
    [{ container: 'ab', scope: 'host' }, 'exclude each other'],
    [{ scope: 'pods' as never }, 'scope must be "host" or "containers"'],
    [{ pid: -1 }, 'pid must be a non-negative integer'],
    [{ since: Number.NaN }, 'since must be a finite number'],
  ])('refuses %j', (filter, message) => {
    expect(() => validateFilter(filter)).toThrow(message);
  });
});

describe('compileFilter with container metadata (pod, namespace, image)', () => {
  // CONTAINER_A is a pod's container, CONTAINER_B a plain podman one; the host event has none
  const fields = new Map([
    [CONTAINER_A, { runtime: 'containerd', container: 'web', image: 'docker.io/library/nginx:1.27', pod: 'web-7f9', namespace: 'shop' }],
    [CONTAINER_B, { runtime: 'podman', container: 'tools', image: 'localhost/amber-test-busybox:1', pod: '', namespace: '' }],
  ]);
  const lookup = (id: string) => fields.get(id);

  it.each<[string, EventFilter, number[]]>([
    ['pod, exact', { pod: 'web-7f9' }, [1, 4]],
    ['pod, not a prefix', { pod: 'web' }, []],
    ['namespace, exact', { namespace: 'shop' }, [1, 4]],
    ['image, a substring of the reference', { image: 'busybox' }, [3]],
    ['image and pod together', { image: 'nginx', pod: 'web-7f9', types: ['open'] }, [4]],
    ['image that no container has', { image: 'redis' }, []],
  ])('%s', (_, filter, pids) => {
    validateFilter(filter);
    expect(events.filter(compileFilter(filter, lookup)).map((e) => e.pid)).toEqual(pids);
  });

  it('an event whose container is unknown (or no lookup) does not match', () => {
    expect(events.filter(compileFilter({ image: 'nginx' })).map((e) => e.pid)).toEqual([]);
    expect(events.filter(compileFilter({ image: 'nginx' }, () => undefined)).map((e) => e.pid)).toEqual([]);
  });

  it('an event already joined (withMetadata) is matched on its own fields, not looked up', () => {
    const joined = { ...openEvent(T0, { pid: 7, containerId: CONTAINER_B }), ...fields.get(CONTAINER_A)! };
    expect(compileFilter({ pod: 'web-7f9' }, () => undefined)(joined as never)).toBe(true);
    expect(compileFilter({ image: 'busybox' }, lookup)(joined as never)).toBe(false);
  });

  it.each<[EventFilter, string]>([
    [{ pod: '' }, 'pod must not be empty'],
    [{ namespace: '' }, 'namespace must not be empty'],
    [{ image: '' }, 'image must not be empty'],
    [{ pod: 'x', scope: 'host' }, 'exclude host processes only'],
  ])('refuses %j', (filter, message) => {
    expect(() => validateFilter(filter)).toThrow(message);
  });
});
