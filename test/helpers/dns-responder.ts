/**
 * Typed entry to the test DNS responder. The implementation lives in
 * dns-responder-cli.cjs so that e2e tests can also run it as a plain script
 * inside a container's network namespace (test/ is not compiled).
 */
import { createRequire } from 'node:module';
import path from 'node:path';

export interface DnsRecords {
  A?: string[];
  AAAA?: string[];
  CNAME?: string[];
}

export interface DnsResponderOptions {
  host?: string;
  /** 0 for any free port (UDP and TCP get the same one). */
  port?: number;
  records?: Record<string, DnsRecords>;
  /** Names never answered, to provoke timeouts. */
  silent?: string[];
}

export interface DnsResponder {
  readonly port: number;
  /** Queries received so far, answered or not, UDP and TCP. */
  readonly queries: number;
  close(): Promise<void>;
}

/** Path of the standalone script: `node <it> --host H --port P --records JSON --silent a,b` prints "ready <port>". */
export const DNS_RESPONDER_CLI = path.join(__dirname, 'dns-responder-cli.cjs');

const cli = createRequire(__filename)(DNS_RESPONDER_CLI) as {
  startDnsResponder(opts: DnsResponderOptions): Promise<DnsResponder>;
};

export function startDnsResponder(opts: DnsResponderOptions): Promise<DnsResponder> {
  return cli.startDnsResponder(opts);
}
