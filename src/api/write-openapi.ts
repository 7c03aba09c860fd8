import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname } from 'node:path';
import { OPENAPI_PATH, renderOpenApi } from './openapi.js';

/** `npm run openapi`: regenerate the checked-in docs/openapi.json from the route table. */
const path = fileURLToPath(OPENAPI_PATH);
await mkdir(dirname(path), { recursive: true });
await writeFile(path, renderOpenApi());
process.stdout.write(`wrote ${path}\n`);
