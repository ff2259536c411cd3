// Drives the training page (device_runner/web/index.html) in headless Chromium with playwright-core, for
// tests/test_web.py and benchmarks/page_demo.py. Usage: node device_runner/web/test/drive-page.mjs REQUEST.json -> JSON on stdout.
// REQUEST: {url, classes: [[name, [file, ...]], ...], settings: {epochs, "batch-size", lr, "val-split"},
//           try?: file, screenshot?: path, timeout_s?: number, expect: "done" | "error"}
import fs from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(new URL('../package.json', import.meta.url));
const { chromium } = require('playwright-core');
const req = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
    '--no-first-run', '--disable-extensions', '--disable-component-update', '--disable-sync', '--metrics-recording-only',
    ...(req.chromium_args || [])],
});
const result = { console: [] };
try {
  const page = await browser.newPage({ viewport: { width: 430, height: 932 }, deviceScaleFactor: 1 });
  page.on('console', (m) => { if (m.type() === 'error') result.console.push(m.text()); });
  page.on('pageerror', (e) => result.console.push(String(e)));
  await page.goto(req.url);
  await page.waitForFunction(() => window.mobiletl && window.mobiletl.state !== 'loading', null, { timeout: 60_000 });
  if (req.offline) { // once loaded with the service worker, the page and the export must come up without a network
    await page.evaluate(() => navigator.serviceWorker.ready);
    await page.reload(); // now controlled by the worker: everything it fetches is stored
    await page.waitForFunction(() => window.mobiletl && window.mobiletl.state !== 'loading', null, { timeout: 60_000 });
    if (req.server_pid) process.kill(req.server_pid); // the server is gone for good, not only emulated offline
    await page.context().setOffline(true);
    await page.reload();
    await page.waitForFunction(() => window.mobiletl && window.mobiletl.state !== 'loading', null, { timeout: 60_000 });
    result.offline = await page.evaluate(() => !navigator.onLine);
  }
  result.loaded = await page.evaluate(() => ({ state: window.mobiletl.state, error: window.mobiletl.error, isolated: window.mobiletl.isolated, threads: window.mobiletl.threads, secure: window.isSecureContext }));
  if (result.loaded.state === 'ready') {
    const classes = req.classes || [];
    while ((await page.locator('#classes .class').count()) < classes.length) await page.click('#add-class');
    for (let i = 0; i < classes.length; i++) {
      const [name, files] = classes[i];
      const card = page.locator('#classes .class').nth(i);
      await card.locator('.class-name').fill(name);
      if (files.length) await card.locator('input.pick').setInputFiles(files);
    }
    for (const [k, v] of Object.entries(req.settings || {})) await page.fill(`#${k}`, String(v));
    await page.click('#train');
    await page.waitForFunction(() => ['done', 'error'].includes(window.mobiletl.state), null, { timeout: (req.timeout_s || 300) * 1000 });
    if (req.try) {
      await page.locator('#try-file').setInputFiles(req.try);
      await page.waitForFunction(() => window.mobiletl.prediction !== undefined || window.mobiletl.error, null, { timeout: 60_000 });
    }
  }
  Object.assign(result, await page.evaluate(() => ({
    state: window.mobiletl.state, error: window.mobiletl.error, steps: window.mobiletl.steps, epochs: window.mobiletl.epochs,
    prediction: window.mobiletl.prediction ?? null, status: document.querySelector('#train-status').textContent,
    errorBox: document.querySelector('#error').hidden ? null : document.querySelector('#error').textContent,
    modelStatus: document.querySelector('#model-status').textContent,
  })));
  if (req.screenshot) await page.screenshot({ path: req.screenshot, fullPage: true });
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(result));
