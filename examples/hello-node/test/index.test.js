'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { formatDuration, hasOddLength } = require('../src/index.js');

test('formats durations', () => {
  assert.strictEqual(formatDuration(1500), '2s');
  assert.strictEqual(formatDuration(60000), '1m');
});

test('tells odd lengths', () => {
  assert.strictEqual(hasOddLength([1, 2, 3]), true);
  assert.strictEqual(hasOddLength([]), false);
});
