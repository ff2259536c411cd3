#!/usr/bin/env node
// Train an export's unmodified ORT-training artifacts in onnxruntime-web 1.18's TrainingSession, in headless
// Chromium (playwright-core), and print the results as JSON on stdout.
//
//   node run.mjs SPEC [--out DIR] [--chromium PATH]
//
// SPEC is JSON (inline or a file path):
//   {"cases": [{"name": "adamw", "artifacts": "/path/to/export", "features": "x.f32", "labels": "y.i64",
//               "shape": [N, C, H, W], "steps": 3}]}
// `features` holds float32 little-endian [N, C, H, W] (the backbone's output), `labels` int64 little-endian [N].
// The four ORT-training files are found through the folder's manifest.json `files` roles (docs/MANIFEST.md).
// Output: {"ort": "1.18.0", "browser": ..., "crossOriginIsolated": true, "cases": [{name, losses, stepMs,
// createMs, evalLoss, evalLogits, parametersSize, initialParameters, trainedParameters, ...}]}; with --out DIR
// the parameter vectors (getContiguousParameters(true), float32 LE) are written to DIR/<name>.{initial,trained}.f32
// and the JSON gives those paths instead of base64. A case that fails in ORT gives {name, stage, error} (the
// message of a C++ exception is read from WASM memory) and exit status 2; a failure of the driver itself (no
// browser, bad spec, page error, ...) prints the error (and the page's console) on stderr and exits 1.
//
// The page and the files are served by a small HTTP server on 127.0.0.1 with Cross-Origin-Opener-Policy and
// Cross-Origin-Embedder-Policy headers (a crossOriginIsolated page, as onnxruntime-web expects). Only the page,
// the onnxruntime-web-training dist folder and the files named by the spec are served. No network access.

import {createServer} from 'node:http';
import {createReadStream, existsSync, mkdirSync, readFileSync, statSync, writeFileSync} from 'node:fs';
import {createRequire} from 'node:module';
import {dirname, extname, join, resolve} from 'node:path';
import {fileURLToPath} from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROLES = ['checkpoint', 'training_model', 'eval_model', 'optimizer_model'];
const TYPES = {'.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
               '.wasm': 'application/wasm', '.map': 'application/json'};
// --disable-dev-shm-usage: what Debian's wrapper adds when /dev/shm is small (its check can fail in containers,
// see scripts/setup.sh); shared memory is not needed for one page.
const CHROMIUM_ARGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                       '--no-first-run', '--no-default-browser-check', '--disable-extensions',
                       '--disable-background-networking', '--disable-component-update'];

function fail(message) {
  process.stderr.write(`run.mjs: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const args = {out: null, chromium: process.env.CHROMIUM || '/usr/bin/chromium', spec: null};
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--out') args.out = argv[++i];
    else if (argv[i] === '--chromium') args.chromium = argv[++i];
    else if (args.spec === null) args.spec = argv[i];
    else fail(`unexpected argument ${argv[i]}`);
  }
  if (!args.spec) fail('usage: node run.mjs SPEC.json|\'{"cases": [...]}\' [--out DIR] [--chromium PATH]');
  const text = args.spec.trimStart().startsWith('{') ? args.spec : readFileSync(args.spec, 'utf8');
  args.spec = JSON.parse(text);
  return args;
}

// onnxruntime-web 1.18 under its npm alias; its "./training" export resolves into dist/cjs/.
function ortDist() {
  const require = createRequire(import.meta.url);
  return resolve(dirname(require.resolve('onnxruntime-web-training/training')), '..');
}

function serve(routes) {
  const files = new Map();  // URL path -> file path, for the spec's files
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    let file = files.get(path);
    for (const [prefix, dir] of Object.entries(routes)) {
      if (file) break;
      if (path.startsWith(prefix)) {
        const candidate = resolve(dir, '.' + path.slice(prefix.length - 1));
        if (candidate.startsWith(dir + '/')) file = candidate;
      }
    }
    if (!file || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, {'Content-Type': 'text/plain'}).end('not found');
      return;
    }
    res.writeHead(200, {
      'Content-Type': TYPES[extname(file)] || 'application/octet-stream',
      'Content-Length': statSync(file).size,
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Embedder-Policy': 'require-corp',
      'Cross-Origin-Resource-Policy': 'same-origin',
      'Cache-Control': 'no-store',
    });
    createReadStream(file).pipe(res);
  });
  return new Promise((ok) => server.listen(0, '127.0.0.1', () => ok({server, files, port: server.address().port})));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let chromium;
  try {
    ({chromium} = await import('playwright-core'));
  } catch (e) {
    fail(`playwright-core is not installed (${e.code || e.message}): run scripts/setup.sh`);
  }
  if (!existsSync(args.chromium)) fail(`no Chromium at ${args.chromium}: run scripts/setup.sh`);

  const {server, files, port} = await serve({'/ort/': ortDist(), '/': HERE});
  const cases = args.spec.cases.map((c, i) => {
    const folder = resolve(c.artifacts);
    const manifest = JSON.parse(readFileSync(join(folder, 'manifest.json'), 'utf8'));
    const urls = {};
    const add = (role, file) => {
      if (!existsSync(file)) fail(`${c.name}: missing ${file}`);
      urls[role] = `/files/${i}/${role}`;
      files.set(urls[role], file);
    };
    for (const role of ROLES) add(role, join(folder, manifest.files[role]));
    add('features', resolve(c.features));
    add('labels', resolve(c.labels));
    return {name: c.name || `case${i}`, urls, shape: c.shape, steps: c.steps ?? 3};
  });

  let browser;
  try {
    browser = await chromium.launch({executablePath: args.chromium, args: CHROMIUM_ARGS, timeout: 60000});
  } catch (e) {
    server.close();
    fail(`Chromium (${args.chromium}) did not start: ${e.message}`);
  }
  const consoleLines = [];
  let error = null;
  try {
    const info = {ort: null, crossOriginIsolated: null, userAgent: null, browser: browser.version()};
    const results = [];
    for (const c of cases) {
      // A fresh page (and WASM instance) per case: an error that escapes the WASM module may leave it broken.
      const page = await browser.newPage();
      page.on('console', (m) => consoleLines.push(`${c.name}: ${m.type()}: ${m.text()}`));
      page.on('pageerror', (e) => consoleLines.push(`${c.name}: pageerror: ${e.message}`));
      await page.goto(`http://127.0.0.1:${port}/index.html`);
      await page.waitForFunction(() => window.ortTrainingReady === true, null, {timeout: 30000});
      Object.assign(info, await page.evaluate(() => ({
        ort: window.ortTraining.version, crossOriginIsolated: window.crossOriginIsolated,
        userAgent: navigator.userAgent})));
      const r = await page.evaluate((spec) => window.ortTraining.runCase(spec), c);
      await page.close();
      if (args.out && !r.error) {
        mkdirSync(args.out, {recursive: true});
        for (const key of ['initialParameters', 'trainedParameters']) {
          const path = resolve(args.out, `${r.name}.${key.replace('Parameters', '')}.f32`);
          writeFileSync(path, Buffer.from(r[key], 'base64'));
          r[key] = path;
        }
      }
      results.push(r);
    }
    process.stdout.write(JSON.stringify({...info, cases: results}) + '\n');
    if (results.some((r) => r.error)) process.exitCode = 2;
  } catch (e) {
    const context = consoleLines.length ? `\n  page console:\n    ${consoleLines.join('\n    ')}` : '';
    error = `${e.message}${context}`;
  } finally {
    await browser.close();
    server.close();
  }
  if (error) fail(error);
}

main().catch((e) => fail(e.stack || e.message));
