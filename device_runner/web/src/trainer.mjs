/**
 * The portable training step on onnxruntime-web or onnxruntime-node (one code path; `ort` is the module).
 *
 * State: the trainable tensors as one flat float32 vector `params` [P] and, for AdamW, `exp_avg`,
 * `exp_avg_sq` [P] and the step count (docs/MANIFEST.md `portable`). One `run` of train_step.onnx takes the
 * per-key parameter inputs as views (subarrays) of `params`, and returns loss, logits and the updated vectors,
 * which replace the old ones (onnxruntime-web has no output binding onto input buffers, so the state briefly
 * exists twice during a step). Checkpoints are safetensors files in the Python runner's layout: each tensor
 * under its state_dict key, moments under `exp_avg/<key>`, `exp_avg_sq/<key>`, metadata
 * {format: "mobiletl-portable/1", step}.
 */
import { RunnerError } from './errors.mjs';
import { parse, serialize } from './safetensors.mjs';

export const CHECKPOINT_FORMAT = 'mobiletl-portable/1';

/**
 * Session options, as the Python runner's (device_runner/ort.py session_options). `training`: ORT's memory
 * pattern pre-plans one arena block for the whole step, which for a training graph (stored tensors live across
 * it) measured 1.7x the peak of planning off in the Python runner; off, at no step-time cost.
 */
export function sessionOptions(threads, training = false, executionProviders = ['cpu']) {
  const o = { executionProviders, graphOptimizationLevel: 'all', enableMemPattern: !training };
  if (threads) { o.intraOpNumThreads = threads; o.interOpNumThreads = 1; }
  return o;
}

export async function createSession(ort, bytes, options, what) {
  try {
    return await ort.InferenceSession.create(bytes, options);
  } catch (e) {
    throw new RunnerError(`onnxruntime cannot load ${what}: ${String(e.message || e).split('\n')[0]}`);
  }
}

export class PortableTrainer {
  /**
   * @param {object} ort onnxruntime-web or onnxruntime-node module
   * @param {object} manifest the export's manifest
   * @param {Object<string, Uint8Array>} files bytes by role (manifest.mjs loadExport)
   * @param {{threads?: number, executionProviders?: string[], checkpoint?: Uint8Array}} options
   */
  static async create(ort, manifest, files, options = {}) {
    const so = sessionOptions(options.threads, true, options.executionProviders);
    const t = new PortableTrainer(ort, manifest);
    t.session = await createSession(ort, files.train_step, so, manifest.files.train_step);
    t.evalSession = await createSession(ort, files.eval_step, so, manifest.files.eval_step);
    t.load(options.checkpoint || files.parameters, options.checkpoint ? 'checkpoint' : manifest.files.parameters);
    return t;
  }

  constructor(ort, manifest) {
    this.ort = ort;
    this.manifest = manifest;
    const spec = manifest.portable;
    this.entries = spec.parameters;
    this.trainIO = spec.train_step;
    this.evalIO = spec.eval_step;
    this.stateNames = spec.optimizer.state;
    this.size = spec.parameter_count;
    this.featureShape = manifest.inputs.training.features.slice(1); // [C, H, W]
  }

  /** Parameters, moments and step from safetensors bytes (the export's parameters or a checkpoint). */
  load(bytes, what) {
    const { tensors, metadata } = parse(bytes, what);
    this.params = this._flat(tensors, '', what);
    const step = Number(metadata.step ?? 0);
    if (!Number.isInteger(step) || step < 0) throw new RunnerError(`${what}: metadata step ${metadata.step} is not an integer`);
    this.stepCount = step;
    this.state = {};
    for (const name of this.stateNames) {
      const has = Object.keys(tensors).some((k) => k.startsWith(`${name}/`));
      this.state[name] = step === 0 && !has ? new Float32Array(this.size) : this._flat(tensors, `${name}/`, what);
    }
  }

  _flat(tensors, prefix, what) {
    const flat = new Float32Array(this.size);
    for (const e of this.entries) {
      const t = tensors[prefix + e.name];
      if (!t) throw new RunnerError(`${what} has no tensor '${prefix + e.name}': not a checkpoint of this export`);
      if (t.shape.join(',') !== e.shape.join(',')) {
        throw new RunnerError(`${what}: ${prefix + e.name} has shape [${t.shape}], the export needs [${e.shape}]`);
      }
      flat.set(t.data, e.offset);
    }
    return flat;
  }

  /** Trainable tensors by state_dict key: {name: {shape, data: Float32Array view of params}}. */
  parameters() {
    const out = {};
    for (const e of this.entries) out[e.name] = { shape: e.shape, data: this.params.subarray(e.offset, e.offset + e.size) };
    return out;
  }

  /** @returns {Uint8Array} safetensors checkpoint (parameters, moments, step) */
  checkpoint() {
    const list = this.entries.map((e) => [e.name, e.shape, this.params.subarray(e.offset, e.offset + e.size)]);
    for (const name of this.stateNames) {
      for (const e of this.entries) list.push([`${name}/${e.name}`, e.shape, this.state[name].subarray(e.offset, e.offset + e.size)]);
    }
    return serialize(list, { format: CHECKPOINT_FORMAT, step: String(this.stepCount) });
  }

  _parameterFeeds() {
    const feeds = {};
    for (const e of this.entries) feeds[e.name] = new this.ort.Tensor('float32', this.params.subarray(e.offset, e.offset + e.size), e.shape);
    return feeds;
  }

  _batchFeeds(io, features, labels) {
    const n = labels.length;
    return {
      [io.inputs.features]: new this.ort.Tensor('float32', features, [n, ...this.featureShape]),
      [io.inputs.labels]: new this.ort.Tensor('int64', BigInt64Array.from(labels, (v) => BigInt(v)), [n]),
      ...this._parameterFeeds(),
    };
  }

  /**
   * One training step.
   * @param {Float32Array} features [N, C, H, W] backbone features
   * @param {ArrayLike<number>} labels [N] class indices
   * @param {number} lr learning rate of this step
   * @returns {Promise<{loss: number, logits: Float32Array}>} loss before the update, logits [N, K]. After a
   *   non-finite loss the state is not updated (the caller stops).
   */
  async step(features, labels, lr) {
    const i = this.trainIO.inputs, o = this.trainIO.outputs;
    const feeds = this._batchFeeds(this.trainIO, features, labels);
    feeds[i.lr] = new this.ort.Tensor('float32', Float32Array.of(lr), []);
    if ('step' in i) feeds[i.step] = new this.ort.Tensor('int64', BigInt64Array.of(BigInt(this.stepCount)), []);
    feeds[i.params] = new this.ort.Tensor('float32', this.params, [this.size]);
    for (const name of this.stateNames) feeds[i[name]] = new this.ort.Tensor('float32', this.state[name], [this.size]);
    const r = await this.session.run(feeds);
    const loss = r[o.loss].data[0];
    if (Number.isFinite(loss)) {
      this.params = r[o.params].data;
      for (const name of this.stateNames) this.state[name] = r[o[name]].data;
      this.stepCount += 1;
    }
    return { loss, logits: r[o.logits].data };
  }

  /** Loss and logits of the eval model (dropout off) with the current parameters. */
  async evalStep(features, labels) {
    const o = this.evalIO.outputs;
    const r = await this.evalSession.run(this._batchFeeds(this.evalIO, features, labels));
    return { loss: r[o.loss].data[0], logits: r[o.logits].data };
  }

  async release() {
    await this.session?.release?.();
    await this.evalSession?.release?.();
  }
}
