/**
 * Does Debian bookworm's Python (3.11.2) satisfy a requirement? Understands what repositories
 * and specs write: a pin from .python-version ("3.11", "3.11.4", "python3.11", "system"),
 * PEP 440 specifier sets (">=3.9,<3.12", "~=3.10", "==3.11.*") and Poetry's "^3.11" / "~3.11",
 * with "||" alternatives. A bare pin matches on major.minor: a patch release of 3.11 is taken
 * as compatible with another. Anything unparsable is treated as unsatisfied.
 */

export const DEBIAN_PYTHON = [3, 11, 2];

export function satisfiesDebianPython(requirement: string): boolean {
  return requirement
    .split('||')
    .some((alternative) => {
      const clauses = alternative.split(',').map((c) => c.trim()).filter(Boolean);
      return clauses.length > 0 && clauses.every(satisfiesClause);
    });
}

function satisfiesClause(raw: string): boolean {
  const clause = raw.replace(/^c?python-?/i, '');
  if (clause === 'system' || clause === '*') return true;
  const match = /^(~=|===|==|!=|>=|<=|>|<|\^|~)?\s*(\d+(?:\.\d+)*)(\.\*)?$/.exec(clause);
  if (!match) return false;
  const [, op = '', text, star] = match;
  const version = text.split('.').map(Number);
  const order = compare(DEBIAN_PYTHON, version);

  switch (op) {
    case '':
      return hasPrefix(version.slice(0, 2));
    case '==':
    case '===':
      return star ? hasPrefix(version) : order === 0;
    case '!=':
      return star ? !hasPrefix(version) : order !== 0;
    case '>=':
      return order >= 0;
    case '<=':
      return order <= 0;
    case '>':
      return order > 0;
    case '<':
      return order < 0;
    case '~=':
      return version.length >= 2 && order >= 0 && hasPrefix(version.slice(0, -1));
    case '^':
      return order >= 0 && hasPrefix(version.slice(0, 1));
    case '~':
      return order >= 0 && hasPrefix(version.slice(0, Math.min(version.length, 2)));
    default:
      return false;
  }
}

function hasPrefix(prefix: number[]): boolean {
  return prefix.every((part, i) => DEBIAN_PYTHON[i] === part);
}

function compare(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const diff = (a[i] ?? 0) - (b[i] ?? 0);
    if (diff !== 0) return diff;
  }
  return 0;
}
