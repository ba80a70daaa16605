/** The configured sinks, built from their options (the `upload.sinks` list of the configuration). */
import { S3Sink, type S3SinkOptions } from './s3';
import { SftpSink, type SftpSinkOptions } from './sftp';
import type { Sink } from './sink';

export type SinkConfig = ({ type: 's3' } & S3SinkOptions) | ({ type: 'sftp' } & SftpSinkOptions);

/** Each sink checked and its secrets read now, so a bad one stops the agent at startup; names must be unique. */
export async function createSinks(configs: readonly SinkConfig[], env: NodeJS.ProcessEnv = process.env): Promise<Sink[]> {
  const sinks: Sink[] = [];
  try {
    for (const c of configs) {
      const sink = c.type === 's3' ? await S3Sink.create(c, env) : await SftpSink.create(c);
      if (sinks.some((s) => s.name === sink.name)) {
        await sink.close();
        throw new Error(`two upload sinks are named "${sink.name}": give each its own name`);
      }
      sinks.push(sink);
    }
  } catch (err) {
    await Promise.allSettled(sinks.map((s) => s.close()));
    throw err;
  }
  return sinks;
}
