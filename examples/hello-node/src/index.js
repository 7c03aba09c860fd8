'use strict';
const ms = require('ms');
const isOdd = require('is-odd');

/** "1500" -> "2s": a human duration for a number of milliseconds. */
function formatDuration(milliseconds) {
  return ms(Number(milliseconds));
}

/** Whether a list has an odd number of entries. */
function hasOddLength(list) {
  return isOdd(list.length);
}

module.exports = { formatDuration, hasOddLength };
