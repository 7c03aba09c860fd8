import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import { InputError } from '../util/errors.js';

/**
 * The environment spec: a YAML file naming a repository, a setup script, a memory tier and
 * the variables a task sees. Validated once, here; every error names the file and the field.
 * Unknown keys are errors, so a typo never silently falls back to a default.
 *
 * Secrets stay in the spec as written (a literal or a `${HOST_VAR}` reference) and are
 * resolved only at use time by resolveSecrets(); nothing in this module writes them anywhere.
 */

export const TIERS = {
  small: { memoryMiB: 2048, vcpus: 2, diskGiB: 8 },
  standard: { memoryMiB: 8192, vcpus: 2, diskGiB: 16 },
  large: { memoryMiB: 16384, vcpus: 2, diskGiB: 32 },
} as const;

export type TierName = keyof typeof TIERS;
export interface Tier {
  memoryMiB: number;
  vcpus: number;
  diskGiB: number;
}

const VAR_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const HOST_REF = /^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$/;

const varName = z.string().regex(VAR_NAME, {
  error: 'must be a variable name ([A-Za-z_][A-Za-z0-9_]*)',
});
// Scalars are accepted for convenience (`PORT: 3000`) and kept as strings.
const varValue = z.union([z.string(), z.number(), z.boolean()], {
  error: 'expected a string',
}).transform(String);

const tierObject = z.strictObject({
  memoryMiB: z.number().int().min(256).max(1 << 20),
  vcpus: z.number().int().min(1).max(64),
  diskGiB: z.number().int().min(1).max(4096),
});

const repository = z
  .strictObject({
    url: z.string().min(1).optional(),
    path: z.string().min(1).optional(),
    ref: z.string().min(1).default('HEAD'),
  })
  .refine((r) => (r.url === undefined) !== (r.path === undefined), {
    error: 'give exactly one of url and path',
  });

const schema = z
  .strictObject({
    name: z.string().max(63).regex(/^[a-z0-9][a-z0-9-]*$/, {
      error: 'must be a slug: lowercase letters, digits and dashes, not starting with a dash',
    }),
    repository,
    setup: z.string(),
    tier: z.union([z.enum(['small', 'standard', 'large']), tierObject], {
      error: 'expected "small", "standard", "large" or { memoryMiB, vcpus, diskGiB }',
    }),
    network: z
      .strictObject({ setup: z.boolean().default(true), tasks: z.boolean().default(false) })
      .default({ setup: true, tasks: false }),
    env: z.record(varName, varValue).default({}),
    secrets: z.record(varName, varValue).default({}),
    runtimes: z
      .strictObject({ node: z.string().min(1).optional(), python: z.string().min(1).optional() })
      .default({}),
    task: z
      .strictObject({
        timeoutSeconds: z.number().int().positive().default(1800),
        pidsMax: z.number().int().positive().default(1024),
      })
      .default({ timeoutSeconds: 1800, pidsMax: 1024 }),
  })
  .superRefine((spec, ctx) => {
    for (const key of Object.keys(spec.secrets)) {
      if (key in spec.env) {
        ctx.addIssue({ code: 'custom', path: ['secrets', key], message: `also set in env.${key}` });
      }
    }
  });

/** A validated spec; `repository.path`, when given, is absolute. */
export type EnvSpec = z.output<typeof schema>;

export function resolveTier(tier: EnvSpec['tier']): Tier {
  return typeof tier === 'string' ? { ...TIERS[tier] } : { ...tier };
}

/** Parse and validate spec text: `sourceName` prefixes errors, `baseDir` anchors a path. */
export function parseSpec(text: string, sourceName: string, baseDir: string): EnvSpec {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: false, lineCounter });
  if (doc.errors.length > 0) {
    const err = doc.errors[0];
    const { line } = lineCounter.linePos(err.pos[0]);
    throw new InputError(`${sourceName}: line ${line}: ${err.message}`);
  }
  const input: unknown = doc.toJS();
  const result = schema.safeParse(input);
  if (!result.success) {
    const lines = result.error.issues.flatMap((issue) => describeIssue(issue, [], input));
    throw new InputError(lines.map((l) => `${sourceName}: ${l}`).join('\n'));
  }
  const spec = result.data;
  if (spec.repository.path !== undefined) {
    spec.repository.path = resolve(baseDir, spec.repository.path);
  }
  return spec;
}

export async function loadSpec(file: string): Promise<EnvSpec> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new InputError(`cannot read environment spec ${file}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return parseSpec(text, file, dirname(resolve(file)));
}

/**
 * The secret values for a task, read now: a `${HOST_VAR}` value comes from the host
 * environment, anything else is a literal. Never log or store the result.
 */
export function resolveSecrets(
  spec: EnvSpec,
  hostEnv: NodeJS.ProcessEnv = process.env,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, raw] of Object.entries(spec.secrets)) {
    const ref = HOST_REF.exec(raw);
    if (!ref) {
      out[name] = raw;
      continue;
    }
    const value = hostEnv[ref[1]];
    if (value === undefined) {
      throw new InputError(
        `secret ${name} of environment ${spec.name} reads host variable ${ref[1]}, ` +
          `which is not set; export ${ref[1]} before running prewarm`,
      );
    }
    out[name] = value;
  }
  return out;
}

type Issue = z.core.$ZodIssue;

/** One readable line per problem: `a.b.c: what is wrong`. */
function describeIssue(issue: Issue, prefix: PropertyKey[], input: unknown): string[] {
  const path = [...prefix, ...issue.path];
  const at = (p: PropertyKey[]) => (p.length > 0 ? p.map(String).join('.') : '(top level)');
  switch (issue.code) {
    case 'unrecognized_keys':
      return issue.keys.map((key) => `${at([...path, key])}: unknown key`);
    case 'invalid_union': {
      // Report the branch that got past the top-level type check, if exactly one did.
      const deep = issue.errors.filter((branch) => branch.every((i) => i.path.length > 0));
      if (deep.length === 1) return deep[0].flatMap((i) => describeIssue(i, path, input));
      return [`${at(path)}: ${issue.message}`];
    }
    case 'invalid_type': {
      const value = valueAt(input, path);
      if (value === undefined) return [`${at(path)}: is required`];
      return [`${at(path)}: expected ${article(issue.expected)}, got ${article(kindOf(value))}`];
    }
    case 'invalid_key':
      return [`${at(path)}: invalid key: ${issue.issues.map((i) => i.message).join('; ')}`];
    default:
      return [`${at(path)}: ${issue.message.replace(/^(Invalid input|Too small|Too big): /, '')}`];
  }
}

function valueAt(input: unknown, path: PropertyKey[]): unknown {
  let value = input;
  for (const key of path) {
    if (value === null || typeof value !== 'object') return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

function kindOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'list';
  if (typeof value === 'object') return 'mapping';
  return typeof value;
}

function article(kind: string): string {
  const names: Record<string, string> = { int: 'integer', object: 'mapping', array: 'list' };
  const name = names[kind] ?? kind;
  if (name === 'null') return 'null';
  return /^[aeiou]/.test(name) ? `an ${name}` : `a ${name}`;
}
