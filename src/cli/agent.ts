/** amber agent: the long-running node daemon. Signals end it cleanly. */
import { parseArgs } from 'node:util';
import pino from 'pino';
import { startAgent } from '../agent';
import { loadConfig } from '../config';
import { DEFAULTS } from '../defaults';

export const AGENT_USAGE = `usage: amber agent [--config FILE] [--data-dir DIR] [--log-level LEVEL] [--listen ADDR]... [--node-name NAME] [--metrics-listen HOST:PORT]
  Records every event of this node into the rolling buffer under the data dir
  (default ${DEFAULTS.dataDir}). The API listens on each --listen (unix:///path;
  default unix:///run/amber/amber.sock); --node-name names this node (default the hostname);
  --metrics-listen serves Prometheus metrics at http://HOST:PORT/metrics (default off). Every option has a default; a YAML file and AMBER_*
  environment variables override them (see the README's configuration reference).
  SIGTERM or SIGINT: stop the sensor, flush, close, exit 0.`;

export async function agentCommand(argv: string[], out: NodeJS.WritableStream, env: NodeJS.ProcessEnv): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string', short: 'c' },
      'data-dir': { type: 'string' },
      'log-level': { type: 'string' },
      listen: { type: 'string', multiple: true },
      'node-name': { type: 'string' },
      'metrics-listen': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    out.write(`${AGENT_USAGE}\n`);
    return 0;
  }
  const config = loadConfig({
    file: values.config,
    env,
    overrides: [
      [['dataDir'], values['data-dir']],
      [['logLevel'], values['log-level']],
      [['api', 'listen'], values.listen],
      [['nodeName'], values['node-name']],
      [['metrics', 'listen'], values['metrics-listen']],
    ],
  });
  const log = pino({ level: config.logLevel, base: { pid: process.pid } });
  const agent = await startAgent(config, log);
  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      log.info({ event: 'signal', signal }, 'stopping');
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      // a second signal while flushing ends the process at once
      process.once('SIGINT', () => process.exit(130));
      process.once('SIGTERM', () => process.exit(143));
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  await agent.close();
  log.flush?.();
  return 0;
}
