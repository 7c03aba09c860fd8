import { InputError } from '../util/errors.js';

/** The whole number `value` given for `flag`, written plainly (no sign, exponent, hex or
 * blanks) and from `min` to `max`. */
export function wholeNumber(flag: string, value: string, min: number, max: number): number {
  const n = /^\d{1,10}$/.test(value) ? Number(value) : NaN;
  if (!(n >= min && n <= max)) throw new InputError(`${flag} must be a whole number from ${min} to ${max}, got "${value}"`);
  return n;
}
