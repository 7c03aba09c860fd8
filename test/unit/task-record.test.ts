import { describe, expect, it } from 'vitest';
import { cappedOutput } from '../../src/task/record.js';

describe('cappedOutput', () => {
  it('keeps output up to the cap, cuts the chunk that crosses it, says once that the rest is dropped and how much', () => {
    const got: [string, string][] = [];
    const out = cappedOutput((stream, data) => got.push([stream, data.toString()]), 10);
    out.store(Buffer.from('abcd'));
    out.store(Buffer.from('efgh'));
    out.store(Buffer.from('ijkl'));
    out.store(Buffer.from('mnop'));
    out.finish();
    expect(got.filter(([s]) => s === 'output').map(([, d]) => d).join('')).toBe('abcdefghij');
    const events = got.filter(([s]) => s === 'event').map(([, d]) => d);
    expect(events).toHaveLength(2);
    expect(events[0]).toMatch(/^output past 0 MiB is not stored/);
    expect(events[1]).toMatch(/^6 bytes of output were not stored/);
  });

  it('says nothing when everything fits, even exactly', () => {
    const got: string[] = [];
    const out = cappedOutput((stream, data) => got.push(`${stream}:${data.toString()}`), 8);
    out.store(Buffer.from('abcd'));
    out.store(Buffer.from('efgh'));
    out.finish();
    expect(got).toEqual(['output:abcd', 'output:efgh']);
  });
});
