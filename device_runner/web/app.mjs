// The training page: pick or photograph examples per class, train the export's portable step in this browser
// (onnxruntime-web, WASM), watch loss and accuracy, try the model on a new photo, download model.onnx.
// Everything runs on the device; with the service worker (sw.js) it works offline once loaded.
// For tests and benchmarks the page publishes its progress in `window.mobiletl` ({state, steps, epochs, error}).
import * as ortModule from './node_modules/onnxruntime-web/dist/ort.wasm.min.mjs';
import {
  RunnerError, loadExport, Run, splitDataset, joinedModel, toInput, fit, argmax, checkEveryClassTrains,
} from './src/index.mjs';

const ort = ortModule.default ?? ortModule;
const $ = (sel, root = document) => root.querySelector(sel);
const params = new URLSearchParams(location.search);
const threads = Number(params.get('threads')) || (self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1);
ort.env.wasm.wasmPaths = new URL('./node_modules/onnxruntime-web/dist/', location.href).href;
ort.env.wasm.numThreads = threads;

const page = { exported: null, classes: [], run: null, model: null, checkpoint: null, session: null, classNames: null };
window.mobiletl = { state: 'loading', steps: [], epochs: [], error: null, threads, isolated: self.crossOriginIsolated };

// -- errors: one readable line ------------------------------------------------------------------------------------
function message(e) {
  if (e instanceof RunnerError) return e.message;
  const text = String(e?.message ?? e).split('\n')[0];
  if (/out of memory|memory access out of bounds|allocation failed|Array buffer allocation|OOM|could not allocate|RangeError/i.test(text)) {
    return 'The browser ran out of memory. Use fewer or smaller photos or a smaller batch, or close other tabs.';
  }
  return `Something went wrong: ${text}`;
}
function showError(e) {
  const text = message(e);
  const box = $('#error');
  box.textContent = text;
  box.hidden = false;
  window.mobiletl.error = text;
  if (window.mobiletl.state === 'training') window.mobiletl.state = 'error';
  console.error(e);
}
const clearError = () => { $('#error').hidden = true; window.mobiletl.error = null; };
window.addEventListener('error', (ev) => showError(ev.error ?? ev.message));
window.addEventListener('unhandledrejection', (ev) => showError(ev.reason));

// -- the export ---------------------------------------------------------------------------------------------------
/** WebCrypto exists only in secure contexts (https, localhost); a phone on plain http uses @noble/hashes. */
const sha256 = globalThis.crypto?.subtle ? undefined : async (bytes) => {
  const { sha256: hash } = await import('./node_modules/@noble/hashes/esm/sha2.js');
  return Array.from(hash(bytes), (b) => b.toString(16).padStart(2, '0')).join('');
};

async function useExport(read, where) {
  clearError();
  $('#model-status').textContent = `Checking ${where}…`;
  const exported = await loadExport(read, where, { sha256 });
  const m = exported.manifest;
  page.exported = exported;
  $('#model-status').innerHTML = '';
  const b = document.createElement('b');
  b.textContent = `${m.model} top-${m.top_k} (${m.method})`;
  $('#model-status').append(b, ` · ${m.resolution} px · up to ${m.num_classes} classes · ${(m.portable.parameter_count / 1e6).toFixed(2)} M trainable parameters`);
  window.mobiletl.state = 'ready';
  updateButtons();
}

async function loadServedExport() {
  const base = new URL(params.get('export') ?? 'export/', location.href);
  const read = async (name) => {
    const r = await fetch(new URL(name, base));
    return r.ok ? new Uint8Array(await r.arrayBuffer()) : null;
  };
  try {
    await useExport(read, base.pathname.replace(/\/$/, ''));
  } catch (e) {
    if (!params.get('export') && e instanceof RunnerError && /no manifest/.test(e.message)) {
      $('#model-status').textContent = 'No export is served with this page: pick one below (Use another export).';
      window.mobiletl.state = 'no-export';
      return;
    }
    window.mobiletl.state = 'error';
    $('#model-status').textContent = 'The export could not be used.';
    showError(e);
  }
}

$('#export-files').addEventListener('change', async (ev) => {
  const files = new Map([...ev.target.files].map((f) => [f.name, f]));
  const read = async (name) => (files.has(name) ? new Uint8Array(await files.get(name).arrayBuffer()) : null);
  try { await useExport(read, 'the picked files'); } catch (e) { window.mobiletl.state = 'error'; showError(e); }
});

// -- classes and their photos -------------------------------------------------------------------------------------
function addClass(name) {
  const node = $('#class-template').content.firstElementChild.cloneNode(true);
  const cls = { name, files: [], node };
  $('.class-name', node).value = name;
  $('.class-name', node).addEventListener('input', (ev) => { cls.name = ev.target.value.trim(); updateButtons(); });
  const add = (ev) => {
    for (const f of ev.target.files) {
      cls.files.push(f);
      const img = document.createElement('img');
      img.src = URL.createObjectURL(f);
      img.alt = f.name;
      img.title = `${f.name} (tap to remove)`;
      img.addEventListener('click', () => { cls.files.splice(cls.files.indexOf(f), 1); img.remove(); count(); });
      $('.thumbs', node).append(img);
    }
    ev.target.value = '';
    count();
  };
  const count = () => {
    $('.count', node).textContent = `${cls.files.length} photo${cls.files.length === 1 ? '' : 's'}`;
    updateButtons();
  };
  $('.pick', node).addEventListener('change', add);
  $('.camera', node).addEventListener('change', add);
  $('.remove', node).addEventListener('click', () => {
    page.classes.splice(page.classes.indexOf(cls), 1);
    node.remove();
    updateButtons();
  });
  page.classes.push(cls);
  $('#classes').append(node);
  updateButtons();
  return cls;
}
$('#add-class').addEventListener('click', () => addClass(`class ${page.classes.length + 1}`));

function updateButtons() {
  const training = window.mobiletl.state === 'training';
  $('#train').disabled = training || !page.exported || page.classes.length < 2;
  $('#stop').disabled = !training;
  $('#download-model').disabled = !page.model;
  $('#download-checkpoint').disabled = !page.checkpoint;
}

/** RGB (or grey) pixels of a photo, EXIF orientation applied, as the Python runner decodes it. */
async function decode(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: 'from-image', premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
  } catch {
    throw new RunnerError(`cannot decode image ${file.name}: not an image this browser can read`);
  }
  const { width, height } = bitmap;
  if (width < 8 || height < 8) throw new RunnerError(`${file.name}: image of ${height} x ${width} px is too small (at least 8 x 8)`);
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
  return { data: rgb, width, height, channels: 3 };
}

/** The examples as a dataset (label = position on the page), after checking names and photos. */
async function collectData() {
  const m = page.exported.manifest;
  const names = page.classes.map((c) => c.name);
  if (names.some((n) => !n)) throw new RunnerError('every class needs a name');
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new RunnerError(`two classes are called '${dup}'; class names must differ`);
  if (names.length > m.num_classes) throw new RunnerError(`this export has ${m.num_classes} outputs, but there are ${names.length} classes; remove some or export with --num-classes ${names.length}`);
  const empty = page.classes.filter((c) => !c.files.length).map((c) => c.name);
  if (empty.length) throw new RunnerError(`no photos in class ${empty.map((n) => `'${n}'`).join(', ')}: add some or remove the class`);
  const files = [], labels = [];
  page.classes.forEach((c, label) => c.files.forEach((f) => { files.push(f); labels.push(label); }));
  $('#train-status').textContent = `Checking ${files.length} photos…`;
  const bad = [];
  for (const f of files) { try { await decode(f); } catch { bad.push(f.name); } }
  if (bad.length) throw new RunnerError(`${bad.length} photo${bad.length > 1 ? 's' : ''} cannot be read: ${bad.slice(0, 5).join(', ')}${bad.length > 5 ? ', …' : ''}; tap ${bad.length > 1 ? 'them' : 'it'} to remove`);
  return { length: files.length, labels, classes: names, files, image: (i) => decode(files[i]) };
}

// -- charts -------------------------------------------------------------------------------------------------------
let lossChart, accChart;
function makeCharts() {
  const common = { animation: false, responsive: true, maintainAspectRatio: false, plugins: { legend: { labels: { boxWidth: 12 } } } };
  lossChart?.destroy(); accChart?.destroy();
  lossChart = new Chart($('#loss-chart'), { type: 'line', data: { datasets: [{ label: 'training loss (per step)', data: [], borderColor: '#2c6bed', pointRadius: 0, borderWidth: 2 }, { label: 'validation loss', data: [], borderColor: '#e8710a', pointRadius: 3 }] }, options: { ...common, parsing: false, scales: { x: { type: 'linear', title: { display: true, text: 'step' } }, y: { beginAtZero: true } } } });
  accChart = new Chart($('#acc-chart'), { type: 'line', data: { datasets: [{ label: 'training accuracy', data: [], borderColor: '#2c6bed', pointRadius: 3 }, { label: 'validation accuracy', data: [], borderColor: '#e8710a', pointRadius: 3 }] }, options: { ...common, parsing: false, scales: { x: { type: 'linear', title: { display: true, text: 'epoch' }, ticks: { stepSize: 1 } }, y: { min: 0, max: 1 } } } });
}

// -- training -------------------------------------------------------------------------------------------------------
const numberField = (id) => { const v = $(id).value.trim(); return v === '' ? undefined : Number(v); };
function checkSettings() {
  const whole = (id, label) => { const v = numberField(id); if (v !== undefined && !(Number.isInteger(v) && v >= 1)) throw new RunnerError(`${label} must be a whole number of at least 1`); };
  whole('#epochs', 'Epochs');
  whole('#batch-size', 'Batch');
  const lr = numberField('#lr');
  if (lr !== undefined && !(lr > 0)) throw new RunnerError('Learning rate must be a positive number (or empty for the export\'s)');
  const v = numberField('#val-split');
  if (v !== undefined && !(v >= 0 && v < 1)) throw new RunnerError('Validation must be a fraction from 0 (none) to below 1, e.g. 0.2');
}

$('#train').addEventListener('click', async () => {
  clearError();
  window.mobiletl.state = 'training';
  window.mobiletl.steps = [];
  window.mobiletl.epochs = [];
  page.model = page.checkpoint = page.session = null;
  updateButtons();
  try {
    checkSettings();
    const data = await collectData();
    const valSplit = numberField('#val-split') ?? 0;
    const [train, val] = valSplit > 0 ? splitDataset(data, valSplit, 0) : [data, null];
    checkEveryClassTrains(train);
    makeCharts();
    $('#train-status').textContent = 'Preparing the model…';
    page.run = await Run.create({
      ort, exported: page.exported, train, val, epochs: numberField('#epochs'), batchSize: numberField('#batch-size'),
      lr: numberField('#lr'), seed: 0, checkpointEvery: 1e9,
      onStep: (s) => {
        window.mobiletl.steps.push({ step: s.step, loss: s.loss });
        lossChart.data.datasets[0].data.push({ x: s.step, y: s.loss });
        lossChart.update('none');
        $('#progress').value = s.step / s.totalSteps;
        $('#train-status').textContent = `Epoch ${s.epoch} · step ${s.step} of ${s.totalSteps} · loss ${s.trainLoss.toFixed(3)} · accuracy ${(100 * s.trainAcc).toFixed(0)}%`;
      },
      onMetrics: (r) => {
        window.mobiletl.epochs.push(r);
        accChart.data.datasets[0].data.push({ x: r.epoch, y: r.train_acc });
        if ('val_acc' in r) {
          accChart.data.datasets[1].data.push({ x: r.epoch, y: r.val_acc });
          lossChart.data.datasets[1].data.push({ x: r.step, y: r.val_loss });
        }
        accChart.update('none'); lossChart.update('none');
      },
      onCheckpoint: async (bytes) => { page.checkpoint = bytes; },
    });
    $('#train-status').textContent = `Computing features of ${data.length} photos…`;
    updateButtons();
    await page.run.checkBackbone();
    const last = await page.run.run();
    page.trainedClasses = [...data.classes];
    page.classNames = [...data.classes, ...Array.from({ length: page.exported.manifest.num_classes - data.classes.length }, (_, i) => String(data.classes.length + i))];
    page.model = joinedModel(page.exported.files.inference, page.exported.manifest, page.run.trainer.params, page.classNames);
    page.session = await ort.InferenceSession.create(page.model, { executionProviders: ['wasm'] });
    const wasStopped = page.run.stopping;
    await page.run.release();
    page.run = null;
    const valText = 'val_acc' in last ? ` · validation accuracy ${(100 * last.val_acc).toFixed(0)}%` : '';
    $('#train-status').textContent = `${wasStopped ? 'Stopped' : 'Done'}: ${last.step} steps, training accuracy ${(100 * last.train_acc).toFixed(0)}%${valText}. Try it below.`;
    window.mobiletl.state = 'done';
  } catch (e) {
    window.mobiletl.state = 'error';
    $('#train-status').textContent = `Not trained: ${message(e)}`;
    showError(e);
  } finally {
    updateButtons();
  }
});
$('#stop').addEventListener('click', () => page.run?.stop());

// -- try it ---------------------------------------------------------------------------------------------------------
async function tryPhoto(file) {
  clearError();
  try {
    if (!page.session) throw new RunnerError('train the model first');
    const m = page.exported.manifest;
    const image = await decode(file);
    const x = toInput([fit(image, m.resolution, m.preprocess)], m.resolution, m.normalization.mean, m.normalization.std);
    const out = await page.session.run({ image: new ort.Tensor('float32', x, [1, 3, m.resolution, m.resolution]) });
    const logits = Array.from(out.logits.data).slice(0, page.trainedClasses.length); // the classes it learnt
    const mx = Math.max(...logits), exp = logits.map((v) => Math.exp(v - mx)), sum = exp.reduce((a, b) => a + b, 0);
    const top = argmax(Float32Array.from(logits), 1)[0];
    const box = $('#try-result');
    box.innerHTML = '';
    const img = document.createElement('img');
    img.src = URL.createObjectURL(file);
    const bars = document.createElement('div');
    bars.className = 'bars';
    exp.forEach((v, i) => {
      const row = document.createElement('div');
      row.className = `bar${i === top ? ' top' : ''}`;
      const name = document.createElement('span'); name.className = 'name'; name.textContent = page.classNames[i];
      const track = document.createElement('div'); track.className = 'track';
      const fill = document.createElement('div'); fill.className = 'fill'; fill.style.width = `${(100 * v / sum).toFixed(1)}%`;
      track.append(fill);
      const pct = document.createElement('span'); pct.textContent = `${(100 * v / sum).toFixed(0)}%`;
      row.append(name, track, pct);
      bars.append(row);
    });
    box.append(img, bars);
    window.mobiletl.prediction = page.classNames[top];
  } catch (e) { showError(e); }
}
for (const id of ['#try-file', '#try-camera']) $(id).addEventListener('change', (ev) => { if (ev.target.files[0]) tryPhoto(ev.target.files[0]); ev.target.value = ''; });

// -- downloads ------------------------------------------------------------------------------------------------------
function download(bytes, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
$('#download-model').addEventListener('click', () => download(page.model, 'model.onnx'));
$('#download-checkpoint').addEventListener('click', () => download(page.checkpoint, 'parameters.safetensors'));

// -- start ----------------------------------------------------------------------------------------------------------
$('#runtime').textContent = `onnxruntime-web ${ort.env.versions?.web ?? ''} · WASM · ${threads} thread${threads > 1 ? 's' : ''}${self.crossOriginIsolated ? '' : self.isSecureContext ? ' (serve with serve.py for threads)' : ' (threads need https or localhost)'} · nothing is uploaded`;
addClass('class 1');
addClass('class 2');
if ('serviceWorker' in navigator && params.get('sw') !== '0') navigator.serviceWorker.register('sw.js').catch(() => {});
loadServedExport();
