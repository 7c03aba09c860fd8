import { resolve } from 'node:path';

/** Build (or find in the cache) the guest image once for every VM test. Set
 * PREWARM_SKIP_IMAGE=1 to run unit tests on a host that cannot build it. */
export default async function setup(): Promise<void> {
  process.env.PREWARM_HOME = process.env.PREWARM_TEST_HOME ?? resolve('.prewarm-test');
  process.env.PREWARM_LOG_LEVEL ??= 'warn';
  if (process.env.PREWARM_SKIP_IMAGE) return;
  const { buildImage } = await import('../src/image/build.js');
  const startedAt = Date.now();
  const image = await buildImage({ quiet: false });
  process.stderr.write(`test setup: guest image ${image.digest} ` +
    `${image.cached ? 'from cache' : `built in ${Date.now() - startedAt} ms`}\n`);
}
