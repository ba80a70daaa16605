/**
 * The Prometheus endpoint (prom-client), on its own port, off unless
 * `metrics.listen` is set. Counters are read from the sensor, pipeline and
 * buffer when scraped (nothing on the hot path); API requests are counted as
 * they finish.
 */
import http from 'node:http';
import client from 'prom-client';
import type { ApiParts } from './server';

export interface Metrics {
  /** Where it listens (host:port, the bound port). */
  readonly address: string;
  /** An API call finished: counted by method and status code, timed. */
  observeRequest(method: string, code: string, seconds: number): void;
  close(): Promise<void>;
}

export async function startMetrics(listen: string, parts: ApiParts, activeStreams: () => number): Promise<Metrics> {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(listen);
  if (!m || Number(m[2]) > 65535) throw new Error(`metrics.listen ${listen}: expected host:port (e.g. 127.0.0.1:9464)`);
  const host = m[1].replace(/^\[|\]$/g, '');
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'amber_' });

  /** A counter whose value is read from elsewhere when scraped. */
  const readCounter = (name: string, help: string, labelNames: string[], read: () => Array<[Record<string, string>, number]>) =>
    new client.Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        for (const [labels, v] of read()) this.inc(labels, v);
      },
    });
  const readGauge = (name: string, help: string, read: () => number) =>
    new client.Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read());
      },
    });

  readCounter('amber_events_total', 'Events the sensor delivered, by type.', ['type'], () =>
    Object.entries(parts.sensor.stats().received).map(([type, v]) => [{ type }, v]),
  );
  readCounter('amber_kernel_drops_total', 'Records the kernel could not queue (ring buffer full), by type.', ['type'], () =>
    Object.entries(parts.sensor.stats().drops).map(([type, v]) => [{ type }, v]),
  );
  readCounter('amber_subscriber_dropped_events_total', 'Events a pipeline subscriber (an API stream, ...) had no room for, by subscriber.', ['subscriber'], () =>
    parts.pipeline.stats().subscribers.map((s) => [{ subscriber: s.name }, s.dropped]),
  );
  readGauge('amber_buffer_bytes', 'Bytes of the buffer segments on disk.', () => parts.buffer.stats().bytes);
  readGauge('amber_buffer_events', 'Events in the buffer segments.', () => parts.buffer.stats().events);
  readGauge('amber_buffer_oldest_event_age_seconds', 'Age of the oldest event in the buffer (0 when empty).', () => {
    const oldest = parts.buffer.stats().oldestTs;
    return oldest === null ? 0 : Math.max(0, Date.now() / 1000 - oldest / 1e9);
  });
  readGauge('amber_buffer_frozen_bytes', 'Bytes of frozen windows.', () => parts.buffer.stats().frozen.bytes);
  readGauge('amber_api_active_streams', 'Open Trace and Query streams.', activeStreams);
  const requests = new client.Counter({
    name: 'amber_api_requests_total',
    help: 'API calls finished, by method and gRPC status code.',
    labelNames: ['method', 'code'],
    registers: [registry],
  });
  const latency = new client.Histogram({
    name: 'amber_api_request_duration_seconds',
    help: 'API call durations (streams: until they end), by method and gRPC status code.',
    labelNames: ['method', 'code'],
    buckets: [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 60, 600],
    registers: [registry],
  });

  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404).end('not found: GET /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(`${err.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`cannot listen on metrics.listen ${listen}: ${err.message}`)));
    server.listen(Number(m[2]), host, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  return {
    address: `${m[1]}:${port}`,
    observeRequest(method, code, seconds) {
      requests.inc({ method, code });
      latency.observe({ method, code }, seconds);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
