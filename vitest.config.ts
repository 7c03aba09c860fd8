import { resolve } from 'node:path';
import { defineConfig } from 'vitest/config';

// VM tests boot real QEMU guests; the build machines have two cores, so files run one at a
// time. Tests share PREWARM_HOME (.prewarm-test/ unless PREWARM_TEST_HOME says otherwise)
// so the guest image is built once, by the global setup.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 900_000,
    globalSetup: ['test/global-setup.ts'],
    env: {
      PREWARM_HOME: process.env.PREWARM_TEST_HOME ?? resolve('.prewarm-test'),
      PREWARM_LOG_LEVEL: process.env.PREWARM_LOG_LEVEL ?? 'warn',
    },
  },
});
