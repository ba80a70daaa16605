/**
 * amber health: asks one agent's standard gRPC health service
 * (grpc.health.v1, the one src/api/server.ts serves) and exits 0 only when it
 * answers SERVING. It is the DaemonSet's liveness and readiness probe: the
 * kubelet's own gRPC probe speaks plaintext TCP, and the agent's TCP listener
 * is mutual TLS only, so the probe asks over the node-local unix socket.
 *
 * Also runnable on its own (node dist/src/cli/health.js ...), which the probes
 * use: it loads this module alone, not every command, so it answers fast.
 */
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { DEFAULT_SERVER } from '../api/client';
import { grpcTarget, parseServerAddress } from '../api/address';
import { parseDurationMs } from '../time';
import { UsageError } from './usage';

export const HEALTH_USAGE = `usage: amber health [--server unix:///path] [--service NAME] [--timeout DURATION]
  --server ADDR               the agent's unix socket (default ${DEFAULT_SERVER})
  --service NAME              the service asked about (default "": the agent as a whole)
  --timeout DURATION          the deadline of the check (default 3s)
Exits 0 when the agent answers SERVING, 1 otherwise (the answer or the error on stderr).`;

type HealthClient = grpc.Client & {
  check(req: { service: string }, options: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: { status: string | number }) => void): void;
};

/** The status the agent's health service gives for `service` ("SERVING", "NOT_SERVING", ...). */
export function checkHealth(server: string, service: string, timeoutMs: number): Promise<string> {
  const address = parseServerAddress(server);
  if (address.kind !== 'unix') throw new UsageError(`--server ${server}: the health check asks the node-local unix socket`);
  const Health = grpc.makeGenericClientConstructor(healthService, 'grpc.health.v1.Health');
  const client = new Health(grpcTarget(address), grpc.credentials.createInsecure()) as unknown as HealthClient;
  return new Promise<string>((resolve, reject) => {
    client.check({ service }, { deadline: Date.now() + timeoutMs }, (err, res) => {
      client.close();
      if (err) reject(new Error(`${server}: ${err.details || err.message}`));
      else resolve(String(res?.status));
    });
  });
}

export async function healthCommand(argv: string[], out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      server: { type: 'string', default: DEFAULT_SERVER },
      service: { type: 'string', default: '' },
      timeout: { type: 'string', default: '3s' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    out.write(`${HEALTH_USAGE}\n`);
    return 0;
  }
  const timeoutMs = parseDurationMs(values.timeout);
  try {
    const status = await checkHealth(values.server, values.service, timeoutMs);
    (status === 'SERVING' ? out : err).write(`${status}\n`);
    return status === 'SERVING' ? 0 : 1;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    err.write(`amber: ${(e as Error).message}\n`);
    return 1;
  }
}

if (require.main === module) {
  healthCommand(process.argv.slice(2), process.stdout, process.stderr).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`amber: ${(e as Error).message}\n`);
      process.exitCode = 2;
    },
  );
}
