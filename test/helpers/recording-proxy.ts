/**
 * A plain HTTP proxy on 127.0.0.1 that forwards every request to a target
 * port and records what went over the wire (method, path, headers), for
 * asserting headers a server would silently ignore.
 */
import http from 'node:http';
import type net from 'node:net';

export interface RecordedRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
}

export class RecordingProxy {
  readonly requests: RecordedRequest[] = [];
  /** Called with each request before it is forwarded (e.g. to kill the server at the right moment). */
  onRequest: ((req: RecordedRequest) => void | Promise<void>) | undefined;
  private readonly server: http.Server;

  private constructor(readonly targetPort: number) {
    this.server = http.createServer((req, res) => void this.forward(req, res));
  }

  static async start(targetPort: number): Promise<RecordingProxy> {
    const p = new RecordingProxy(targetPort);
    await new Promise<void>((resolve) => p.server.listen(0, '127.0.0.1', resolve));
    return p;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private async forward(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const rec = { method: req.method!, url: req.url!, headers: { ...req.headers } };
    this.requests.push(rec);
    await this.onRequest?.(rec);
    const up = http.request({ host: '127.0.0.1', port: this.targetPort, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
      res.writeHead(upRes.statusCode!, upRes.headers);
      upRes.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
