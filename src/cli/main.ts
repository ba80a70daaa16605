#!/usr/bin/env node
/** The amber command: the only place that reads argv and sets the exit code. */
import { traceCommand, UsageError } from './trace';

const USAGE = `usage: amber <command> [options]
commands:
  trace <type|all> --local    stream events from this node's kernel (exec, exit, fork, open, connect, accept, dns)
run "amber <command> --help" for a command's options`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'trace':
      return traceCommand(rest, process.stdout, process.stderr);
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
