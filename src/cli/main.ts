#!/usr/bin/env node
/** The amber command: the only place that reads argv and sets the exit code. */
import { agentCommand } from './agent';
import { bufferQuery, bufferStats } from './buffer';
import { incidentsCommand } from './incidents';
import { healthCommand } from './health';
import { inspectCommand } from './inspect';
import { statusCommand } from './status';
import { traceCommand } from './trace';
import { UsageError } from './usage';
import { verifyCommand } from './verify';

const USAGE = `usage: amber <command> [options]
commands:
  agent                       record every event of this node into the rolling buffer (the daemon)
  trace <type|all>            stream live events from agents (--server, repeatable; default the local socket),
                              or from this node's kernel with --local (exec, exit, fork, open, connect, accept, dns)
  buffer query                search the buffer of agents (--server), or a data dir offline (--data-dir)
  buffer stats                what a buffer holds
  status                      what agents are doing: sensor, counters, drops, buffer, signing key (--server, repeatable)
  incidents <command>         an agent's incidents: trigger, list, show, pull (the signed archive), release
  verify BUNDLE               check an evidence bundle (directory or archive) against its signed manifest
  inspect BUNDLE              a readable account of an evidence bundle; --grep searches its memory cores
  health                      whether the local agent answers SERVING (the DaemonSet's probe)
run "amber <command> --help" for a command's options`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'agent':
      return agentCommand(rest, process.stdout, process.env);
    case 'trace':
      return traceCommand(rest, process.stdout, process.stderr);
    case 'status':
      return statusCommand(rest, process.stdout, process.stderr);
    case 'incidents':
      return incidentsCommand(rest, process.stdout, process.stderr);
    case 'health':
      return healthCommand(rest, process.stdout, process.stderr);
    case 'verify':
      return verifyCommand(rest, process.stdout, process.stderr, process.env);
    case 'inspect':
      return inspectCommand(rest, process.stdout, process.stderr, process.env);
    case 'buffer': {
      const [sub, ...args] = rest;
      if (sub === 'query') return bufferQuery(args, process.stdout, process.stderr);
      if (sub === 'stats') return bufferStats(args, process.stdout, process.stderr);
      throw new UsageError('usage: amber buffer query|stats [options] (--help for each)');
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n`);
      return command === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command "${command}"\n${USAGE}`);
  }
}

// A reader that went away (EPIPE) is not a crash: commands write through OutputWriter, which stops quietly.
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});
// grpc-js puts an IP-address server's address in the TLS SNI, which Node deprecates (DEP0123): not the user's to fix
process.removeAllListeners('warning');
process.on('warning', (w: Error & { code?: string }) => {
  if (w.code !== 'DEP0123') process.stderr.write(`(node) ${w.name}: ${w.message}\n`);
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const usage = err instanceof UsageError || (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS');
    process.stderr.write(`amber: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = usage ? 2 : 1;
  },
);
