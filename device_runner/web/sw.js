// Offline mode: every GET the page makes (page, library, onnxruntime-web's WASM, the export) is stored, and
// served from the store when the network is gone. Network first, so a re-exported model is picked up online.
const CACHE = 'mobiletl-runner-v1';
const SHELL = ['./', 'index.html', 'app.mjs', 'style.css', 'app.webmanifest', 'src/index.mjs', 'src/errors.mjs',
  'src/manifest.mjs', 'src/order.mjs', 'src/preprocess.mjs', 'src/run.mjs', 'src/trainer.mjs', 'src/safetensors.mjs',
  'src/onnx.mjs', 'src/data.mjs', 'node_modules/chart.js/dist/chart.umd.min.js',
  'node_modules/onnxruntime-web/dist/ort.wasm.min.mjs', 'node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs',
  'node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm', 'node_modules/@noble/hashes/esm/sha2.js',
  'node_modules/@noble/hashes/esm/_md.js', 'node_modules/@noble/hashes/esm/_u64.js', 'node_modules/@noble/hashes/esm/utils.js',
  'node_modules/@noble/hashes/esm/crypto.js'];

self.addEventListener('install', (e) => { e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).catch(() => {})); self.skipWaiting(); });
self.addEventListener('activate', (e) => e.waitUntil(self.clients.claim()));
self.addEventListener('fetch', (e) => {
  if (e.request.method !== 'GET' || !e.request.url.startsWith(self.location.origin)) return;
  e.respondWith(fetch(e.request).then((r) => {
    if (r.ok) { const copy = r.clone(); caches.open(CACHE).then((c) => c.put(e.request, copy)); }
    return r;
  }).catch(() => caches.match(e.request).then((r) => r || Response.error())));
});
