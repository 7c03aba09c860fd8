import { describe, expect, it } from 'vitest';
import { prewarmCli } from '../vm/cli.js';
import { useTempHome } from './temp-home.js';

describe('CLI input checks: pool sizes, --remote', () => {
  useTempHome('prewarm-cli-pool-');

  it('takes only a plain whole number up to the API\'s limit', async () => {
    const env = { PREWARM_HOME: process.env.PREWARM_HOME };
    for (const size of ['1e9', '1001', '', '0x2', ' 2', '-1', '1.5']) {
      const r = await prewarmCli(['pool', 'set', 'web', '--size', size], { env });
      expect(r.exitCode, size).toBe(1);
      expect(r.stderr, size).toContain(`--size must be a whole number from 0 to 1000, got "${size}"`);
    }
  }, 120_000);

  it('refuses --remote rather than change this host\'s pools', async () => {
    const env = { PREWARM_HOME: process.env.PREWARM_HOME };
    const r = await prewarmCli(['--remote', 'http://127.0.0.1:9', 'pool', 'set', 'web', '--size', '0'], { env });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('`prewarm pool set` has no remote mode and would act on this host, not on http://127.0.0.1:9');
    const snap = await prewarmCli(['snapshot', 'ls'], { env: { ...env, PREWARM_REMOTE: 'http://127.0.0.1:9' } });
    expect(snap.exitCode).toBe(1);
    expect(snap.stderr).toContain('`prewarm snapshot ls` has no remote mode');
  }, 60_000);

  it('refuses a --remote URL with a query or fragment, or not http(s)', async () => {
    const env = { PREWARM_HOME: process.env.PREWARM_HOME };
    for (const url of ['http://127.0.0.1:9/?x=1', 'http://127.0.0.1:9#frag', 'ftp://127.0.0.1:9']) {
      const r = await prewarmCli(['--remote', url, 'task', 'ls'], { env });
      expect(r.exitCode, url).toBe(1);
      expect(r.stderr, url).toContain(`--remote must be an http(s) URL without a query or fragment`);
    }
  }, 60_000);
});
