import { defineConfig } from 'vitest/config';

// VM tests boot real QEMU guests; the build machines have two cores, so files run one at a time.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 600_000,
    globalSetup: ['test/global-setup.ts'],
  },
});
