#!/usr/bin/env node
/**
 * mobiletl-train-js: train an export's portable step on a board with onnxruntime-node (or onnxruntime-web's
 * WASM backend with --backend wasm), the same loop and run folder as the Python runner's `mobiletl-train`:
 * RUN/run.json, RUN/metrics.jsonl (one JSON record per epoch), RUN/checkpoint/{parameters.safetensors,
 * state.json}, RUN/model.onnx (image -> logits, class names in its metadata). Errors: one line on stderr,
 * exit code 2; Ctrl-C / SIGTERM: the last checkpoint stands, exit 130 (resume with --resume).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { RunnerError } from '../src/errors.mjs';
import { loadExport } from '../src/manifest.mjs';
import { Run, SHUFFLE } from '../src/run.mjs';
import { checkEveryClassTrains, splitDataset } from '../src/data.mjs';
import { joinedModel } from '../src/onnx.mjs';
import { findBadImages, loadFolder, withoutFiles } from './images.mjs';

const USAGE = `usage: mobiletl-train-js --artifacts DIR --data DIR [--val DIR | --val-split F] [--epochs N]
        [--batch-size N] [--lr F] [--schedule cosine|linear|constant] [--seed N] [--out RUN] [--force | --resume]
        [--checkpoint-every N] [--threads N] [--backend node|wasm] [--allow-unused-outputs] [--no-progress]

  --artifacts DIR     folder written by mobiletl-export (its manifest.json and the portable step's files)
  --data DIR          class-per-folder images (PNG/JPEG): one sub-folder per class, label = sorted position
  --val DIR           validation images (same classes); default: --val-split of --data
  --val-split F       fraction of --data held out for validation (default 0.1)
  --epochs N          (default 5)       --batch-size N   (default 8)
  --lr F              peak learning rate (default: the export's)
  --schedule S        cosine (default), linear or constant, per step
  --seed N            shuffling seed (default 0); same seed, same order as the Python runner
  --out RUN           run folder (default runs/latest)
  --force             replace an existing run folder      --resume   continue it from its last checkpoint
  --checkpoint-every N  steps between checkpoints (default 100)
  --threads N         intra-op threads (default: onnxruntime's choice)
  --backend B         node (onnxruntime-node, default) or wasm (onnxruntime-web's WASM in Node)
  --allow-unused-outputs  train with fewer class folders than the export has outputs
  --skip-bad-images   leave out image files that cannot be decoded (reported) instead of stopping
  --no-progress       no progress bar`;

const OPTIONS = {
  artifacts: { type: 'string' }, data: { type: 'string' }, val: { type: 'string' }, 'val-split': { type: 'string', default: '0.1' },
  epochs: { type: 'string', default: '5' }, 'batch-size': { type: 'string', default: '8' }, lr: { type: 'string' },
  schedule: { type: 'string', default: 'cosine' }, seed: { type: 'string', default: '0' }, out: { type: 'string', default: 'runs/latest' },
  force: { type: 'boolean', default: false }, resume: { type: 'boolean', default: false }, 'checkpoint-every': { type: 'string', default: '100' },
  threads: { type: 'string' }, backend: { type: 'string', default: 'node' }, 'no-progress': { type: 'boolean', default: false },
  'max-steps': { type: 'string' }, help: { type: 'boolean', short: 'h', default: false },
  'allow-unused-outputs': { type: 'boolean', default: false }, 'skip-bad-images': { type: 'boolean', default: false },
};
// options that decide what a run computes: --resume must see the same ones
const RESUME_FIXED = ['artifacts', 'data', 'val', 'val-split', 'epochs', 'batch-size', 'lr', 'schedule', 'seed'];

function number(args, name, { integer = false, min = -Infinity, optional = false } = {}) {
  const raw = args[name];
  if (raw === undefined && optional) return undefined;
  const v = Number(raw);
  if (raw === '' || !Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min) {
    throw new RunnerError(`--${name} must be ${integer ? 'an integer' : 'a number'}${min > -Infinity ? ` >= ${min}` : ''}, got '${raw}'`);
  }
  return v;
}

export async function loadOrt(backend) {
  if (backend === 'node' || backend === 'wasm') {
    const ort = await import(backend === 'node' ? 'onnxruntime-node' : 'onnxruntime-web');
    return ort.default ?? ort;
  }
  throw new RunnerError(`--backend must be node or wasm, got '${backend}'`);
}

/** Bytes of a file of `folder`, null when absent (manifest.mjs loadExport's reader). */
export const folderReader = (folder) => async (name) => {
  try {
    const b = fs.readFileSync(path.join(folder, name));
    return new Uint8Array(b.buffer, b.byteOffset, b.length);
  } catch (e) {
    if (e.code === 'ENOENT') return null;
    throw new RunnerError(`cannot read ${path.join(folder, name)}: ${e.message}`);
  }
};

/** Write `bytes` to `file` atomically (temporary file in the same folder, then rename). */
function writeAtomic(file, bytes) {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  fs.writeFileSync(tmp, bytes);
  fs.renameSync(tmp, file);
}

/** RUN/checkpoint/ replaced as a whole: write checkpoint.tmp/, then swap (the Python runner's layout). */
function saveCheckpoint(out, bytes, state) {
  const tmp = path.join(out, 'checkpoint.tmp'), final = path.join(out, 'checkpoint'), old = path.join(out, 'checkpoint.old');
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp);
  fs.writeFileSync(path.join(tmp, 'parameters.safetensors'), bytes);
  fs.writeFileSync(path.join(tmp, 'state.json'), JSON.stringify(state, null, 1));
  if (fs.existsSync(final)) { fs.rmSync(old, { recursive: true, force: true }); fs.renameSync(final, old); }
  fs.renameSync(tmp, final);
  fs.rmSync(old, { recursive: true, force: true });
}

function loadCheckpoint(out) {
  for (const name of ['checkpoint', 'checkpoint.old']) {
    try {
      const state = JSON.parse(fs.readFileSync(path.join(out, name, 'state.json'), 'utf8'));
      const b = fs.readFileSync(path.join(out, name, 'parameters.safetensors'));
      return { state, bytes: new Uint8Array(b.buffer, b.byteOffset, b.length) };
    } catch { /* try the older one */ }
  }
  return null; // --resume always continues a run folder: without a checkpoint, from step 0
}

/** sha256 over every file's relative path, size and modification time under `root` (what --resume compares). */
export function fingerprint(root) {
  const h = crypto.createHash('sha256');
  const walk = (dir) => { // follows symlinks (they are read); hidden names and broken links are not data
    for (const name of fs.readdirSync(dir).filter((n) => !n.startsWith('.')).sort()) {
      const p = path.join(dir, name);
      let st;
      try { st = fs.statSync(p, { bigint: true }); } catch { continue; }
      if (st.isDirectory()) walk(p);
      else h.update(`${path.relative(root, p)}\t${st.size}\t${st.mtimeNs}\n`);
    }
  };
  walk(root);
  return h.digest('hex');
}

/** --resume continues only the run that was started: same classes, data and artifacts. */
function checkSameRun(out, identity) {
  const earlier = JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8'));
  if (earlier.class_names && JSON.stringify(earlier.class_names) !== JSON.stringify(identity.class_names)) {
    throw new RunnerError(`run ${out} was trained on other classes (${earlier.class_names.join(', ')}; now ${identity.class_names.join(', ')}); start a new run`);
  }
  for (const [key, what] of [['data_fingerprint', '--data'], ['val_fingerprint', '--val']]) {
    if (key in earlier && earlier[key] !== identity[key]) throw new RunnerError(`the files of ${what} changed since run ${out} started (added, removed or modified); restore them or start a new run`);
  }
  if (earlier.manifest_sha256 && JSON.stringify(earlier.manifest_sha256) !== JSON.stringify(identity.manifest_sha256)) {
    throw new RunnerError(`the artifacts are not the ones run ${out} started with (re-exported?); resume with the original export or start a new run`);
  }
}

function prepareRunDir(out, args) {
  const runJson = path.join(out, 'run.json');
  if (args.resume) {
    if (!fs.existsSync(out)) throw new RunnerError(`nothing to resume: run folder ${out} does not exist`);
    let earlier;
    try { earlier = JSON.parse(fs.readFileSync(runJson, 'utf8')); } catch { throw new RunnerError(`${out} is not a run folder (no readable run.json); nothing to resume`); }
    for (const k of RESUME_FIXED) {
      const a = earlier[k] ?? null, b = args[k] ?? null;
      const same = ['artifacts', 'data', 'val'].includes(k) && a && b ? path.resolve(a) === path.resolve(b) : String(a) === String(b);
      if (!same) throw new RunnerError(`run ${out} was started with --${k} ${JSON.stringify(a)}, not ${JSON.stringify(b)}; resume with the same options, or start a new run`);
    }
    return;
  }
  if (fs.existsSync(out)) {
    if (!args.force) throw new RunnerError(`run folder ${out} already exists; pass --resume to continue it or --force to replace it`);
    if (!fs.statSync(out).isDirectory()) throw new RunnerError(`--out ${out} is a file, not a run folder`);
    if (fs.readdirSync(out).length && !fs.existsSync(runJson)) throw new RunnerError(`--force replaces only a run folder, and ${out} is not one (no run.json); choose another --out`);
    const inside = [args.artifacts, args.data, args.val].filter(Boolean).map((p) => path.resolve(p));
    if (inside.some((p) => p === path.resolve(out) || p.startsWith(path.resolve(out) + path.sep))) throw new RunnerError(`--out ${out} holds the artifacts or the data of this run; choose another --out`);
    fs.rmSync(out, { recursive: true });
  }
  fs.mkdirSync(out, { recursive: true });
}

async function progressBar(enabled) {
  if (!enabled || !process.stderr.isTTY) return null;
  const { default: cliProgress } = await import('cli-progress');
  return new cliProgress.SingleBar({ stream: process.stderr, format: 'epoch {epoch} |{bar}| {value}/{total} img | loss {loss} acc {acc}', hideCursor: true, clearOnComplete: false }, cliProgress.Presets.shades_classic);
}

export async function main(argv) {
  let args;
  // `--epochs -1`: parseArgs would take -1 for an option; join negative numbers to their flag
  argv = argv.reduce((out, a) => (/^-\d/.test(a) && out.length && out[out.length - 1].startsWith('--') && OPTIONS[out[out.length - 1].slice(2)]?.type === 'string'
    ? [...out.slice(0, -1), `${out[out.length - 1]}=${a}`] : [...out, a]), []);
  try {
    ({ values: args } = parseArgs({ args: argv, options: OPTIONS, strict: true }));
  } catch (e) {
    throw new RunnerError(`${e.message.split('\n')[0]} (see --help)`);
  }
  if (args.help) { console.log(USAGE); return 0; }
  for (const req of ['artifacts', 'data']) if (!args[req]) throw new RunnerError(`--${req} is required (see --help)`);
  const epochs = number(args, 'epochs', { integer: true, min: 1 });
  const batchSize = number(args, 'batch-size', { integer: true, min: 1 });
  const checkpointEvery = number(args, 'checkpoint-every', { integer: true, min: 1 });
  const seed = number(args, 'seed', { integer: true, min: 0 });
  const lr = number(args, 'lr', { optional: true });
  if (lr !== undefined && !(lr > 0)) throw new RunnerError('--lr must be positive');
  const threads = number(args, 'threads', { integer: true, min: 1, optional: true });
  const maxSteps = number(args, 'max-steps', { integer: true, min: 1, optional: true });
  if (!['cosine', 'linear', 'constant'].includes(args.schedule)) throw new RunnerError(`--schedule must be cosine, linear or constant, got '${args.schedule}'`);

  if (!fs.existsSync(args.artifacts) || !fs.statSync(args.artifacts).isDirectory()) throw new RunnerError(`artifact folder not found: ${args.artifacts}`);
  const exported = await loadExport(folderReader(args.artifacts), args.artifacts);
  const ort = await loadOrt(args.backend);
  if (args.backend === 'wasm' && threads) ort.env.wasm.numThreads = threads;
  const K = exported.manifest.num_classes;
  const data = loadFolder(args.data, K);
  if (data.classes.length < K && !args['allow-unused-outputs']) {
    throw new RunnerError(`${args.data} has ${data.classes.length} classes (${data.classes.join(', ')}) but the export has ${K} outputs; export with --num-classes ${data.classes.length}, or pass --allow-unused-outputs to leave ${K - data.classes.length} of them untrained`);
  }
  let train, val;
  if (args.val) {
    train = data;
    val = loadFolder(args.val, K);
    const unknown = val.classes.filter((c) => !train.classes.includes(c));
    if (unknown.length) throw new RunnerError(`--val has classes that --data lacks: ${unknown.join(', ')}`);
    const labelOf = Object.fromEntries(train.classes.map((c, i) => [c, i]));
    val.labels = val.labels.map((y) => labelOf[val.classes[y]]); // labels follow class names, not positions
    val.classes = train.classes;
  } else {
    [train, val] = splitDataset(data, number(args, 'val-split'), seed);
  }
  const bad = [...await findBadImages(data), ...(args.val ? await findBadImages(val) : [])];
  if (bad.length && !args['skip-bad-images']) {
    const shown = bad.slice(0, 3).map(([f, why]) => `${f} (${why})`).join('; ');
    throw new RunnerError(`${bad.length} image file${bad.length > 1 ? 's' : ''} cannot be decoded: ${shown}${bad.length > 3 ? '; ...' : ''}; fix or remove them, or pass --skip-bad-images`);
  }
  if (bad.length) {
    const files = bad.map(([f]) => f);
    if (args.val) { train = withoutFiles(train, files); val = withoutFiles(val, files); } else {
      [train, val] = splitDataset(withoutFiles(data, files), number(args, 'val-split'), seed);
    }
    process.stderr.write(`skipped ${bad.length} unreadable image${bad.length > 1 ? 's' : ''}\n`);
  }
  checkEveryClassTrains(train);
  const out = args.out;
  prepareRunDir(out, args);
  const classNames = [...train.classes, ...Array.from({ length: K - train.classes.length }, (_, i) => String(train.classes.length + i))];
  const identity = { class_names: classNames, data_fingerprint: fingerprint(args.data), val_fingerprint: args.val ? fingerprint(args.val) : null, manifest_sha256: exported.manifest.sha256 };
  let resume = {};
  if (args.resume) {
    checkSameRun(out, identity);
    const found = loadCheckpoint(out);
    if (found) resume = { state: found.state, checkpoint: found.bytes };
    else process.stderr.write(`mobiletl-train-js: no checkpoint in ${out} yet; starting the run again from step 0\n`);
  } else {
    const record = {
      runner: 'mobiletl-train-js', backend: args.backend, artifacts: args.artifacts, data: args.data, val: args.val ?? null,
      'val-split': args['val-split'], epochs: args.epochs, 'batch-size': args['batch-size'], lr: args.lr ?? null,
      schedule: args.schedule, seed: args.seed, shuffle: SHUFFLE, ...identity,
    };
    writeAtomic(path.join(out, 'run.json'), JSON.stringify(record, null, 1));
  }
  const metrics = fs.openSync(path.join(out, 'metrics.jsonl'), 'a');
  const bar = await progressBar(!args['no-progress']);
  let barEpoch = 0;
  const run = await Run.create({
    ort, exported, train, val, epochs, batchSize, lr, schedule: args.schedule, seed, threads, checkpointEvery, maxSteps, ...resume,
    onStep: (s) => {
      if (!bar) return;
      if (s.epoch !== barEpoch) { if (barEpoch) bar.stop(); bar.start(s.epochSize, 0, { epoch: `${s.epoch}/${epochs}`, loss: '-', acc: '-' }); barEpoch = s.epoch; }
      bar.update(Math.min(s.seen, s.epochSize), { loss: s.trainLoss.toFixed(3), acc: s.trainAcc.toFixed(3) });
    },
    onMetrics: (r) => {
      fs.writeSync(metrics, JSON.stringify(r) + '\n');
      if (args['no-progress']) return;
      bar?.stop(); barEpoch = 0;
      const v = 'val_loss' in r ? `, val loss ${r.val_loss.toPrecision(4)} acc ${r.val_acc.toFixed(3)}` : '';
      process.stderr.write(`epoch ${r.epoch}/${epochs}: train loss ${r.train_loss.toPrecision(4)} acc ${r.train_acc.toFixed(3)}${v}, ${r.samples_per_s.toFixed(0)} img/s\n`);
    },
    onCheckpoint: async (bytes, state) => saveCheckpoint(out, bytes, state),
  });
  const stop = () => { run.stop(); interrupted = true; };
  let interrupted = false;
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  await run.checkBackbone();
  process.stderr.write(`training ${exported.manifest.model} top-${exported.manifest.top_k} (${exported.manifest.method}) on ${train.length} images of ${train.classes.length} classes, validating on ${val.length}; onnxruntime-${args.backend}\n`);
  const last = await run.run();
  bar?.stop();
  fs.closeSync(metrics);
  if (interrupted) {
    process.stderr.write('mobiletl-train-js: interrupted; resume with --resume\n');
    await run.release();
    return 130;
  }
  const model = path.join(out, 'model.onnx');
  writeAtomic(model, joinedModel(exported.files.inference, exported.manifest, run.trainer.params, classNames));
  await run.release();
  const summary = Object.fromEntries(Object.entries(last).map(([k, v]) => [k, typeof v === 'number' && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v]));
  console.log(JSON.stringify({ run: out, model, classes: classNames, ...summary, ...(bad.length ? { skipped: bad.length } : {}) }));
  return 0;
}

const isMain = process.argv[1] && fs.realpathSync(process.argv[1]) === fs.realpathSync(fileURLToPath(import.meta.url));
if (isMain) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e) => {
    if (e instanceof RunnerError) {
      process.stderr.write(`mobiletl-train-js: error: ${e.message.split('\n')[0]}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`mobiletl-train-js: internal error: ${e.stack || e}\n`);
      process.exitCode = 1;
    }
  });
}
