/** Where the API listens and where clients connect: unix:///path, tcp://host:port, or host:port. */

export type Listener = { kind: 'unix'; path: string; text: string } | { kind: 'tcp'; host: string; port: number; text: string };

/** A listener of `api.listen` / `--listen`; an Error says what is wrong. */
export function parseListenAddress(text: string): Listener {
  if (text.startsWith('unix://')) {
    const p = text.slice('unix://'.length);
    if (!p.startsWith('/')) throw new Error(`${text}: a unix socket needs an absolute path (unix:///run/amber/amber.sock)`);
    if (p.split('/').includes('..')) throw new Error(`${text}: the socket path must not contain ".."`);
    if (p.includes('\0')) throw new Error(`${text}: the socket path contains a NUL byte`);
    // sun_path holds 108 bytes with the NUL
    if (Buffer.byteLength(p) > 107) throw new Error(`${text}: a unix socket path is at most 107 bytes`);
    return { kind: 'unix', path: p, text };
  }
  if (text.startsWith('tcp://')) {
    const { host, port } = hostPort(text.slice('tcp://'.length), text);
    return { kind: 'tcp', host, port, text };
  }
  throw new Error(`${text}: a listener is unix:///path or tcp://host:port`);
}

/** A server a client names: unix:///path, tcp://host:port or host:port. */
export function parseServerAddress(text: string): Listener {
  if (text.startsWith('unix://') || text.startsWith('tcp://')) return parseListenAddress(text);
  if (text.startsWith('/')) return parseListenAddress(`unix://${text}`);
  const { host, port } = hostPort(text, text);
  return { kind: 'tcp', host, port, text: `tcp://${text}` };
}

function hostPort(hp: string, text: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(hp);
  if (!m || Number(m[2]) > 65535) throw new Error(`${text}: expected host:port (e.g. 10.0.0.5:7443)`);
  return { host: m[1], port: Number(m[2]) };
}

/** The target grpc-js dials. */
export function grpcTarget(l: Listener): string {
  return l.kind === 'unix' ? `unix://${l.path}` : `${l.host}:${l.port}`;
}

/** Trailer key of a Trace stream: the events this client missed in all (both sides use it). */
export const DROPPED_TRAILER = 'amber-dropped';
