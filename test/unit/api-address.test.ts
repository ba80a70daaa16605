/** Listener and server addresses: what is accepted, and what is refused before it reaches the filesystem or the network. */
import { describe, expect, it } from 'vitest';
import { grpcTarget, parseListenAddress, parseServerAddress } from '../../src/api/address';

describe('API addresses', () => {
  it('parses unix sockets and TCP listeners', () => {
    expect(parseListenAddress('unix:///run/amber/amber.sock')).toEqual({ kind: 'unix', path: '/run/amber/amber.sock', text: 'unix:///run/amber/amber.sock' });
    expect(parseListenAddress('tcp://0.0.0.0:7443')).toEqual({ kind: 'tcp', host: '0.0.0.0', port: 7443, text: 'tcp://0.0.0.0:7443' });
    expect(parseListenAddress('tcp://[::1]:0')).toMatchObject({ kind: 'tcp', host: '[::1]', port: 0 });
  });

  it('takes host:port and bare paths as servers', () => {
    expect(parseServerAddress('10.0.0.5:7443')).toMatchObject({ kind: 'tcp', host: '10.0.0.5', port: 7443 });
    expect(parseServerAddress('node-7.example:7443')).toMatchObject({ kind: 'tcp', host: 'node-7.example', port: 7443 });
    expect(parseServerAddress('/run/amber/amber.sock')).toMatchObject({ kind: 'unix', path: '/run/amber/amber.sock' });
    expect(grpcTarget(parseServerAddress('unix:///a/b.sock'))).toBe('unix:///a/b.sock');
    expect(grpcTarget(parseServerAddress('h:1'))).toBe('h:1');
  });

  it.each([
    ['unix://relative.sock', 'absolute path'],
    ['unix:///run/../etc/amber.sock', 'must not contain ".."'],
    ['unix:///run/a\0b', 'NUL'],
    [`unix:///${'x'.repeat(120)}`, 'at most 107 bytes'],
    ['tcp://host', 'expected host:port'],
    ['tcp://host:99999', 'expected host:port'],
    ['tcp://ho st:1', 'expected host:port'],
    ['http://x:1', 'unix:///path or tcp://host:port'],
  ])('refuses %j', (text, message) => {
    expect(() => parseListenAddress(text)).toThrow(message);
  });
});
