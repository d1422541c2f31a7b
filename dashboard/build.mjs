// Builds the dashboard into gateway/dashboard_assets/ (committed, so that running the server
// needs no Node): app.js and app.css bundled and minified by esbuild, index.html with the
// sources' hash in its asset URLs (cache busting), and build-info.json holding that hash and
// the hash of each built file. tests/test_dashboard_assets.py recomputes both: a change to the
// sources without a rebuild, or a hand edit of a built file, fails it.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'gateway', 'dashboard_assets');

/** Every input of the build, as paths relative to dashboard/, sorted (byte order). */
function inputs() {
  const files = ['build.mjs', 'package.json', 'package-lock.json', 'tsconfig.json'];
  const walk = (dir) => {
    for (const entry of readdirSync(join(here, dir), { withFileTypes: true })) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory()) walk(path);
      else files.push(path);
    }
  };
  walk('src');
  return files.sort((a, b) => (Buffer.from(a) < Buffer.from(b) ? -1 : Buffer.from(a) > Buffer.from(b) ? 1 : 0));
}

/** sha256 over each input's path, length and bytes (the test computes the same). */
function sourceHash() {
  const hash = createHash('sha256');
  for (const path of inputs()) {
    const data = readFileSync(join(here, path));
    hash.update(`${path}\n${data.length}\n`);
    hash.update(data);
  }
  return hash.digest('hex');
}

const sourcesHash = sourceHash();
mkdirSync(out, { recursive: true });
await build({
  entryPoints: { app: join(here, 'src', 'main.ts') },
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2020',
  minify: true,
  legalComments: 'none',
  outdir: out,
  logLevel: 'warning',
});
await build({
  entryPoints: { app: join(here, 'src', 'styles.css') },
  bundle: true,
  minify: true,
  outdir: out,
  logLevel: 'warning',
});
const short = sourcesHash.slice(0, 16);
writeFileSync(join(out, 'index.html'), readFileSync(join(here, 'src', 'index.html'), 'utf8').replaceAll('__HASH__', short));
const built = {};
for (const name of ['app.css', 'app.js', 'index.html']) {
  built[name] = createHash('sha256').update(readFileSync(join(out, name))).digest('hex');
}
writeFileSync(join(out, 'build-info.json'), JSON.stringify({ sources: sourcesHash, files: built }, null, 2) + '\n');
console.log(`dashboard built into ${relative(process.cwd(), out) || out} (sources ${short})`);
