#!/usr/bin/env node
/**
 * Worker of benchmarks/js_step.py: times the portable training step (train_step.onnx) of one export with the
 * JavaScript runner's PortableTrainer (device_runner/web/src) on one runtime, and prints `RESULT {json}` as
 * its last stdout line.
 *
 *   node benchmarks/js_step.mjs --runtime node|wasm|chromium --artifacts DIR --threads N [--warmup 3] [--steps 20]
 *
 * DIR is an export folder to which js_step.py added `features.f32` (float32 [N, C, H, W], little-endian) and
 * `inputs.json` ({batch, feature_shape, labels}): every runtime trains on the same batch.
 *
 * node:     onnxruntime-node, session option intraOpNumThreads = N.
 * wasm:     onnxruntime-web's WASM backend in this Node process, env.wasm.numThreads = N (ORT-web ignores
 *           intraOpNumThreads; N - 1 worker threads join the calling thread).
 * chromium: the same WASM backend in headless Chromium (/usr/bin/chromium through playwright-core). This script
 *           serves benchmarks/js_step.html, device_runner/web/src, onnxruntime-web's dist folder and DIR from
 *           127.0.0.1 with COOP/COEP headers (crossOriginIsolated, so SharedArrayBuffer and WASM threads work),
 *           and samples /proc every --sample-ms (default 100) while the trainer is created and during the
 *           warm-up steps, and once after the timed steps: the summed VmRSS (and, every --pss-every-th sample,
 *           Pss) of Chromium's renderer processes (the page's JS, its WASM heap and the pthread workers all live
 *           in its renderer) and of all Chromium processes. The timed steps run unsampled: on 2 cores, a sampler
 *           waking every 50-100 ms slowed 2-thread WASM steps up to 3x. Also reports Chromium's CPU seconds, which
 *           the driver needs to tell its own load from other processes'.
 *
 * WASM heap: WebAssembly.Memory is wrapped before onnxruntime-web loads, so the heap ORT allocates in is known;
 * its size after the run is its peak (a WebAssembly memory never shrinks).
 */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..');
const WEB = path.join(REPO, 'device_runner', 'web');
const ORT_WEB_DIST = path.join(WEB, 'node_modules', 'onnxruntime-web', 'dist');
const requireWeb = createRequire(path.join(WEB, 'package.json'));
const MiB = 1024 * 1024;

// Every WebAssembly.Memory created from here on (onnxruntime-web's heap among them) is recorded.
const wasmMemories = [];
WebAssembly.Memory = new Proxy(WebAssembly.Memory, {
  construct(target, args, newTarget) {
    const memory = Reflect.construct(target, args, newTarget);
    wasmMemories.push(memory);
    return memory;
  },
});
const wasmHeapBytes = () => Math.max(0, ...wasmMemories.map((m) => m.buffer.byteLength));

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b), h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
};

function readInputs(dir) {
  const info = JSON.parse(fs.readFileSync(path.join(dir, 'inputs.json'), 'utf8'));
  const b = fs.readFileSync(path.join(dir, 'features.f32'));
  const features = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  const expected = info.batch * info.feature_shape.reduce((a, c) => a * c, 1);
  if (features.length !== expected) throw new Error(`features.f32 holds ${features.length} floats, inputs.json says ${expected}`);
  return { features, labels: info.labels };
}

const folderReader = (dir) => async (name) => {
  try {
    const b = fs.readFileSync(path.join(dir, name));
    return new Uint8Array(b.buffer, b.byteOffset, b.length);
  } catch (e) {
    if (e.code === 'ENOENT') return null;
    throw e;
  }
};

async function loadOrt(runtime, threads) {
  if (runtime === 'node') {
    const ort = requireWeb('onnxruntime-node');
    return { ort, version: ort.env?.versions?.node ?? requireWeb('onnxruntime-node/package.json').version };
  }
  const mod = await import(pathToFileURL(path.join(ORT_WEB_DIST, 'ort.node.min.mjs')).href);
  const ort = mod.default ?? mod;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.proxy = false;
  return { ort, version: ort.env?.versions?.web };
}

/** Node runtimes: create the trainer, warm up, time the steps. */
async function runInNode(args) {
  const { ort, version } = await loadOrt(args.runtime, args.threads);
  const { loadExport, PortableTrainer } = await import(pathToFileURL(path.join(WEB, 'src', 'index.mjs')).href);
  const { features, labels } = readInputs(args.artifacts);
  const t0 = performance.now();
  const { manifest, files } = await loadExport(folderReader(args.artifacts), args.artifacts);
  const trainer = await PortableTrainer.create(ort, manifest, files, { threads: args.threads });
  const createMs = performance.now() - t0;
  const lr = manifest.optimizer.lr, losses = [], times = [];
  for (let i = 0; i < args.warmup; i++) losses.push((await trainer.step(features, labels, lr)).loss);
  for (let i = 0; i < args.steps; i++) {
    const s = performance.now();
    const { loss } = await trainer.step(features, labels, lr);
    times.push(performance.now() - s);
    losses.push(loss);
  }
  const result = {
    runtime: args.runtime, threads: args.threads, ort_version: version, node: process.versions.node,
    median_ms: median(times), min_ms: Math.min(...times), step_ms: times, create_ms: createMs,
    loss_first: losses[0], loss_last: losses.at(-1),
    peak_rss_mb: process.resourceUsage().maxRSS / 1024, // VmHWM of this process (KiB)
    wasm_heap_mb: args.runtime === 'wasm' ? wasmHeapBytes() / MiB : null,
  };
  await trainer.release();
  return result;
}

// ------------------------------------------------------------------------------------------------ Chromium

const TYPES = { '.html': 'text/html; charset=utf-8', '.mjs': 'text/javascript', '.js': 'text/javascript',
  '.wasm': 'application/wasm', '.json': 'application/json', '.map': 'application/json' };

/** Static server on 127.0.0.1 (random port): url prefix -> folder, every response cross-origin isolated. */
function serve(routes) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname === '/favicon.ico') { res.writeHead(204); res.end(); return; }
    const headers = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp',
      'Cross-Origin-Resource-Policy': 'same-origin', 'Cache-Control': 'no-store' };
    for (const [prefix, target] of Object.entries(routes)) {
      if (!url.pathname.startsWith(prefix)) continue;
      const rest = decodeURIComponent(url.pathname.slice(prefix.length));
      const file = prefix.endsWith('/') ? path.resolve(target, rest) : target;
      if (prefix.endsWith('/') && !file.startsWith(path.resolve(target) + path.sep)) break;
      fs.readFile(file, (err, data) => {
        if (err) { res.writeHead(404, headers); res.end('not found'); return; }
        res.writeHead(200, { ...headers, 'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
        res.end(data);
      });
      return;
    }
    res.writeHead(404, headers);
    res.end('not found');
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** pid -> parent pid for every process (from /proc/PID/stat). */
function parents() {
  const map = new Map();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      map.set(Number(name), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* gone */ }
  }
  return map;
}

function descendants(root) {
  const ppid = parents(), out = [];
  for (const pid of ppid.keys()) {
    for (let p = pid, hops = 0; p > 1 && hops < 64; p = ppid.get(p) ?? 0, hops++) {
      if (p === root) { out.push(pid); break; }
    }
  }
  return out;
}

function kib(text, field) {
  const m = text.match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'));
  return m ? Number(m[1]) : 0;
}

/**
 * Memory of Chromium's processes (this process's descendants) now, MiB: the renderers' summed VmRSS and the
 * largest renderer's, all processes' summed VmRSS; with `pss`, also the summed Pss (smaps_rollup walks the page
 * tables under the process's mmap lock, so it is read only every `pss-every`-th sample). VmHWM is not used: the
 * kernel updates it lazily (a renderer's VmHWM read below its sampled VmRSS).
 */
function chromiumMemory(pids, pss) {
  const s = { renderer_rss: 0, renderer_rss_max: 0, all_rss: 0, renderers: 0, processes: 0 };
  if (pss) Object.assign(s, { renderer_pss: 0, all_pss: 0 });
  for (const pid of pids) {
    try {
      const renderer = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('--type=renderer');
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      const rss = kib(status, 'VmRSS') / 1024;
      const p = pss ? kib(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'), 'Pss') / 1024 : 0;
      s.all_rss += rss; s.processes += 1;
      if (pss) s.all_pss += p;
      if (renderer) {
        s.renderer_rss += rss; s.renderers += 1;
        s.renderer_rss_max = Math.max(s.renderer_rss_max, rss);
        if (pss) s.renderer_pss += p;
      }
    } catch { /* process ended */ }
  }
  return s;
}

/** CPU seconds of Chromium's processes so far (user + system, with their reaped children's): the driver counts
 * them as its own when it checks that the machine was otherwise idle (Chromium's processes are not reaped into
 * this process's rusage). */
function chromiumCpuSeconds() {
  let ticks = 0;
  for (const pid of descendants(process.pid)) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[0] = state (field 3)
      ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]); // utime stime cutime cstime
    } catch { /* process ended */ }
  }
  return ticks / 100; // USER_HZ
}

async function runInChromium(args) {
  const { chromium } = requireWeb('playwright-core');
  const server = await serve({
    '/js_step.html': path.join(HERE, 'js_step.html'),
    '/ort/': ORT_WEB_DIST,
    '/src/': path.join(WEB, 'src'),
    '/export/': path.resolve(args.artifacts),
  });
  const origin = `http://127.0.0.1:${server.address().port}`;
  const browser = await chromium.launch({
    executablePath: args.chromium,
    args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--enable-precise-memory-info',
      '--enable-blink-features=ForceEagerMeasureMemory'],
  });
  const peak = {};
  let pids = [], samples = 0, samplerMs = 0;
  const sample = (pss = samples % args.pssEvery === 0) => {
    const t0 = performance.now();
    if (samples % 10 === 0) pids = descendants(process.pid); // Chromium's processes
    const m = chromiumMemory(pids, pss);
    samples += 1;
    for (const [k, v] of Object.entries(m)) peak[k] = Math.max(peak[k] ?? 0, v);
    samplerMs += performance.now() - t0;
    return m;
  };
  const messages = [];
  let timer;
  try {
    const page = await browser.newPage();
    page.on('console', (msg) => { if (['warning', 'error'].includes(msg.type())) messages.push(`${msg.type()}: ${msg.text()}`); });
    page.on('pageerror', (e) => messages.push(`pageerror: ${e.message}`));
    await page.goto(`${origin}/js_step.html`);
    await page.waitForFunction(() => window.benchReady === true || window.benchError, null, { timeout: 60000 });
    const loadError = await page.evaluate(() => window.benchError ?? null);
    if (loadError) throw new Error(`bench page: ${loadError}`);
    const baseline = sample(true); // page loaded, onnxruntime-web imported, WASM not yet instantiated
    // Sampling runs while the trainer is created and during the warm-up steps (where the memory peaks: the
    // WASM heap never shrinks, and every step allocates the same), not during the timed steps: with 2 threads on
    // 2 cores, a sampler waking up every 100 ms slowed the steps up to 3x (the pool's threads wait for each other).
    timer = setInterval(sample, args.sampleMs);
    const cpu0 = process.cpuUsage();
    const { create_ms: createMs } = await page.evaluate((opts) => window.benchPrepare(opts), { artifacts: '/export/', threads: args.threads });
    await page.evaluate((n) => window.benchSteps(n), args.warmup);
    clearInterval(timer);
    const cpu = process.cpuUsage(cpu0);
    sample(true);
    const times = await page.evaluate((n) => window.benchSteps(n), args.steps);
    const end = sample(true);
    const result = await page.evaluate(() => window.benchFinish());
    const chromiumCpu = chromiumCpuSeconds();
    return {
      runtime: 'chromium', threads: args.threads, ...result,
      median_ms: median(times), min_ms: Math.min(...times), step_ms: times, create_ms: createMs,
      chromium_version: browser.version(), sample_ms: args.sampleMs, pss_every: args.pssEvery, samples,
      sampler_ms: samplerMs, driver_cpu_ms: (cpu.user + cpu.system) / 1000,
      renderers: peak.renderers, chromium_processes: peak.processes,
      renderer_rss_baseline_mb: baseline.renderer_rss, renderer_pss_baseline_mb: baseline.renderer_pss,
      renderer_rss_peak_mb: peak.renderer_rss, renderer_pss_peak_mb: peak.renderer_pss,
      renderer_rss_max_peak_mb: peak.renderer_rss_max, renderer_rss_end_mb: end.renderer_rss,
      chromium_rss_peak_mb: peak.all_rss, chromium_pss_peak_mb: peak.all_pss,
      chromium_cpu_s: chromiumCpu, console: messages.slice(0, 20),
    };
  } finally {
    clearInterval(timer);
    await browser.close();
    server.close();
  }
}

const OPTIONS = {
  runtime: { type: 'string' }, artifacts: { type: 'string' }, threads: { type: 'string', default: '1' },
  warmup: { type: 'string', default: '3' }, steps: { type: 'string', default: '20' },
  'sample-ms': { type: 'string', default: '100' }, 'pss-every': { type: 'string', default: '10' }, chromium: { type: 'string', default: '/usr/bin/chromium' },
};

async function main() {
  const { values } = parseArgs({ args: process.argv.slice(2), options: OPTIONS, strict: true });
  if (!['node', 'wasm', 'chromium'].includes(values.runtime) || !values.artifacts) {
    throw new Error('usage: js_step.mjs --runtime node|wasm|chromium --artifacts DIR --threads N [--warmup 3] [--steps 20]');
  }
  const args = { ...values, threads: Number(values.threads), warmup: Number(values.warmup), steps: Number(values.steps),
    sampleMs: Number(values['sample-ms']), pssEvery: Number(values['pss-every']) };
  const result = args.runtime === 'chromium' ? await runInChromium(args) : await runInNode(args);
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
}

main().then(() => process.exit(0), (e) => {
  process.stderr.write(`js_step.mjs: ${String(e?.stack ?? e)}\n`);
  process.exit(1);
});
