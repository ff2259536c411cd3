/**
 * The training loop of `mobiletl-train`, step for step (device_runner/train.py): backbone features computed
 * once per sample and cached in memory, epochs shuffled by order.mjs (seed + epoch), batch indices sorted,
 * learning-rate schedule per step, evaluation after every epoch, checkpoints every `checkpointEvery` steps.
 * For the same data, seed and hyperparameters the losses equal the Python runner's (tests/test_web.py).
 *
 * A dataset is {length, labels: ArrayLike<number>, classes: string[], image(i): Promise<{data: Uint8Array,
 * width, height, channels}>} with channels 1 (grey) or 3 (RGB), interleaved uint8.
 */
import { RunnerError } from './errors.mjs';
import { EPOCH, permutation } from './order.mjs';
import { fit, toInput } from './preprocess.mjs';
import { PortableTrainer, createSession, sessionOptions } from './trainer.mjs';

export const SHUFFLE = 'pcg32 fisher-yates(seed + epoch, stream 0)'; // as device_runner/train.py

/** Below this spread of the features across images the frozen layers are untrained (device_runner/train.py). */
export const DEAD_FEATURE_SPREAD = 1e-4;

/** Refuse features that do not depend on the image: mean over elements of the std over the n samples. */
export function checkFeatures(features, n) {
  const size = features.length / n;
  let total = 0;
  for (let j = 0; j < size; j++) {
    let mean = 0;
    for (let i = 0; i < n; i++) mean += features[i * size + j];
    mean /= n;
    let v = 0;
    for (let i = 0; i < n; i++) { const d = features[i * size + j] - mean; v += d * d; }
    total += Math.sqrt(v / n);
  }
  const spread = total / size;
  if (!Number.isFinite(spread)) throw new RunnerError('the backbone gives NaN or infinite features: the export\'s frozen weights are broken');
  if (spread < DEAD_FEATURE_SPREAD) {
    throw new RunnerError(`the backbone gives (almost) the same features for every image (spread ${spread.toExponential(1)} across images): its frozen layers are untrained, so nothing can be learnt; export with --weights FILE (a trained state_dict)`);
  }
}

/** Learning rate of step `step` of `total` (cosine | linear | constant), as device_runner/train.py. */
export function learningRate(base, schedule, step, total) {
  if (schedule === 'constant' || total <= 1) return base;
  const t = Math.min(step / total, 1.0);
  if (schedule === 'cosine') return base * 0.5 * (1 + Math.cos(Math.PI * t));
  if (schedule === 'linear') return base * (1 - t);
  throw new RunnerError(`unknown schedule '${schedule}'`);
}

/** Backbone features per sample, computed on first use and kept (the backbone is frozen). */
class FeatureCache {
  constructor(n, size) {
    this.size = size;
    this.store = new Float32Array(n * size);
    this.filled = new Uint8Array(n);
    this.hits = 0;
    this.misses = 0;
  }

  async get(index, compute) {
    const missing = index.filter((i) => !this.filled[i]);
    if (missing.length) {
      const feats = await compute(missing);
      missing.forEach((i, k) => { this.store.set(feats.subarray(k * this.size, (k + 1) * this.size), i * this.size); this.filled[i] = 1; });
    }
    this.misses += missing.length;
    this.hits += index.length - missing.length;
    const out = new Float32Array(index.length * this.size);
    index.forEach((i, k) => out.set(this.store.subarray(i * this.size, (i + 1) * this.size), k * this.size));
    return out;
  }
}

export class Run {
  /**
   * @param {object} o
   * @param {object} o.ort onnxruntime-web or onnxruntime-node
   * @param {{manifest: object, files: Object<string, Uint8Array>}} o.exported manifest.mjs loadExport()
   * @param {object} o.train dataset; @param {object|null} o.val dataset
   * @param {number} [o.epochs=5] @param {number} [o.batchSize=8] @param {number} [o.lr] default manifest.optimizer.lr
   * @param {string} [o.schedule='cosine'] @param {number} [o.seed=0] @param {number} [o.threads]
   * @param {number} [o.checkpointEvery=100] steps between onCheckpoint calls
   * @param {number} [o.maxSteps] stop early
   * @param {Uint8Array} [o.checkpoint] safetensors checkpoint to resume from, with [o.state] its loop state
   * @param {(r: object) => void} [o.onStep] after every step: {step, epoch, loss, lr, seen, total}
   * @param {(r: object) => void} [o.onMetrics] per epoch: the metrics record (train_loss, val_acc, ...)
   * @param {(bytes: Uint8Array, state: object) => Promise<void>} [o.onCheckpoint]
   */
  static async create(o) {
    const run = new Run(o);
    const { manifest, files } = o.exported;
    const so = sessionOptions(o.threads, false, o.executionProviders);
    run.backbone = await createSession(o.ort, files.backbone, so, manifest.files.backbone);
    run.trainer = await PortableTrainer.create(o.ort, manifest, files, { ...o, checkpoint: o.checkpoint });
    return run;
  }

  constructor(o) {
    const m = o.exported.manifest;
    this.o = o;
    this.manifest = m;
    this.trainData = o.train;
    this.valData = o.val || null;
    this.epochs = o.epochs ?? 5;
    this.batchSize = o.batchSize ?? 8;
    this.schedule = o.schedule ?? 'cosine';
    this.seed = o.seed ?? 0;
    this.lr = o.lr ?? m.optimizer.lr;
    this.checkpointEvery = o.checkpointEvery ?? 100;
    for (const [k, v] of Object.entries({ epochs: this.epochs, batchSize: this.batchSize, checkpointEvery: this.checkpointEvery })) {
      if (!(Number.isInteger(v) && v >= 1)) throw new RunnerError(`${k} must be an integer >= 1, got ${v}`);
    }
    if (!(this.lr > 0)) throw new RunnerError(`the learning rate must be positive, got ${this.lr}`);
    if (!this.trainData.length) throw new RunnerError('the training set is empty');
    const featureShape = m.inputs.training.features.slice(1);
    this.featureSize = featureShape.reduce((a, b) => a * b, 1);
    this.cache = new FeatureCache(this.trainData.length, this.featureSize);
    this.valCache = this.valData ? new FeatureCache(this.valData.length, this.featureSize) : null;
    this.stepsPerEpoch = Math.ceil(this.trainData.length / this.batchSize);
    this.totalSteps = this.stepsPerEpoch * this.epochs;
    this.state = o.state ?? { step: 0, epoch: 0, seed: this.seed, shuffle: SHUFFLE, epoch_loss_sum: 0, epoch_correct: 0, epoch_seen: 0 };
    if (this.state.shuffle !== SHUFFLE) throw new RunnerError(`the checkpoint was made with another shuffle (${this.state.shuffle}); start a new run`);
    this.stopping = false;
    this.history = [];
  }

  /** Ask the loop to stop after the current step (it then checkpoints and returns). */
  stop() { this.stopping = true; }

  async features(data, cache, index) {
    return cache.get(index, (idx) => this.computeFeatures(data, idx));
  }

  /** Backbone features of samples `idx` (one full-size decode at a time); the first batch is checked. */
  async computeFeatures(data, idx) {
    const m = this.manifest;
    const inName = Object.keys(m.inputs.backbone)[0], outName = Object.keys(m.outputs.backbone)[0];
    const R = m.resolution, images = [];
    for (const i of idx) { // one full-size decode at a time: only R x R pixels are kept per image
      const im = await data.image(i);
      images.push(fit(im, R, m.preprocess));
    }
    const x = toInput(images, R, m.normalization.mean, m.normalization.std);
    const r = await this.backbone.run({ [inName]: new this.o.ort.Tensor('float32', x, [idx.length, 3, m.resolution, m.resolution]) });
    const features = r[outName].data;
    if (!this.featuresChecked && idx.length >= 2) { checkFeatures(features, idx.length); this.featuresChecked = true; }
    return features;
  }

  /** Features of the first training images (cached), refusing a dead backbone before anything is trained. */
  async checkBackbone() {
    const n = Math.min(this.trainData.length, 8);
    if (n >= 2 && !this.featuresChecked) await this.computeFeatures(this.trainData, Array.from({ length: n }, (_, i) => i)); // outside the cache: its counts stay true
  }

  /** {val_loss, val_acc} of the eval model on the validation set, or {} without one. */
  async evaluate() {
    const data = this.valData;
    if (!data) return {};
    let lossSum = 0, correct = 0;
    for (let s = 0; s < data.length; s += this.batchSize) {
      const index = Array.from({ length: Math.min(this.batchSize, data.length - s) }, (_, k) => s + k);
      const labels = index.map((i) => data.labels[i]);
      const { loss, logits } = await this.trainer.evalStep(await this.features(data, this.valCache, index), labels);
      lossSum += loss * index.length;
      correct += countCorrect(logits, labels);
    }
    return { val_loss: lossSum / data.length, val_acc: correct / data.length };
  }

  async saveCheckpoint() {
    if (this.o.onCheckpoint) await this.o.onCheckpoint(this.trainer.checkpoint(), { ...this.state });
  }

  /** Train until the last epoch (or maxSteps / stop()); returns the last metrics record. */
  async run() {
    const st = this.state, bs = this.batchSize;
    let last = {};
    while (st.step < this.totalSteps) {
      const epoch = Math.floor(st.step / this.stepsPerEpoch);
      if (epoch !== st.epoch) Object.assign(st, { epoch, epoch_loss_sum: 0, epoch_correct: 0, epoch_seen: 0 });
      const order = permutation(this.trainData.length, this.seed + epoch, EPOCH);
      const first = st.step - epoch * this.stepsPerEpoch;
      const t0 = performance.now();
      let seen0 = 0;
      for (let b = first; b < this.stepsPerEpoch; b++) {
        const index = Array.from(order.subarray(b * bs, (b + 1) * bs)).sort((x, y) => x - y);
        const feats = await this.features(this.trainData, this.cache, index);
        const labels = index.map((i) => this.trainData.labels[i]);
        const lr = learningRate(this.lr, this.schedule, st.step, this.totalSteps);
        const { loss, logits } = await this.trainer.step(feats, labels, lr);
        if (!Number.isFinite(loss)) throw new RunnerError(`loss became ${loss} at step ${st.step}; lower the learning rate`);
        st.step += 1;
        st.epoch_loss_sum += loss * index.length;
        st.epoch_correct += countCorrect(logits, labels);
        st.epoch_seen += index.length;
        seen0 += index.length;
        this.o.onStep?.({ step: st.step, epoch: epoch + 1, loss, lr, seen: (b + 1 - first) * bs, epochSize: this.trainData.length,
          totalSteps: this.totalSteps, trainLoss: st.epoch_loss_sum / st.epoch_seen, trainAcc: st.epoch_correct / st.epoch_seen });
        if (st.step % this.checkpointEvery === 0) await this.saveCheckpoint();
        if ((this.o.maxSteps && st.step >= this.o.maxSteps) || this.stopping) break;
      }
      const epochDone = st.step % this.stepsPerEpoch === 0;
      const elapsed = Math.max((performance.now() - t0) / 1000, 1e-9);
      last = {
        event: epochDone ? 'epoch' : 'partial-epoch', epoch: epoch + 1, step: st.step,
        lr: learningRate(this.lr, this.schedule, st.step, this.totalSteps),
        train_loss: st.epoch_loss_sum / Math.max(st.epoch_seen, 1), train_acc: st.epoch_correct / Math.max(st.epoch_seen, 1),
        samples_per_s: seen0 / elapsed, cache: 'memory', cache_hits: this.cache.hits, cache_misses: this.cache.misses,
        ...(await this.evaluate()),
      };
      this.history.push(last);
      this.o.onMetrics?.(last);
      if ((this.o.maxSteps && st.step >= this.o.maxSteps) || this.stopping) break;
    }
    await this.saveCheckpoint();
    return last;
  }

  async release() {
    await this.backbone?.release?.();
    await this.trainer?.release();
  }
}

/** Number of rows of logits [N, K] whose argmax (first maximum, as numpy) equals the label. */
export function countCorrect(logits, labels) {
  const k = logits.length / labels.length;
  let correct = 0;
  labels.forEach((y, n) => {
    let best = 0;
    for (let j = 1; j < k; j++) if (logits[n * k + j] > logits[n * k + best]) best = j;
    if (best === Number(y)) correct += 1;
  });
  return correct;
}

/** Argmax per row of logits [N, K]. */
export function argmax(logits, n) {
  const k = logits.length / n;
  return Array.from({ length: n }, (_, r) => {
    let best = 0;
    for (let j = 1; j < k; j++) if (logits[r * k + j] > logits[r * k + best]) best = j;
    return best;
  });
}
