/** mobiletl-runner: train mobiletl-export exports (the portable step) with onnxruntime-web or -node. */
export { RunnerError } from './errors.mjs';
export { loadExport, checkManifest, FORMAT, PORTABLE_FILES } from './manifest.mjs';
export { PortableTrainer, CHECKPOINT_FORMAT } from './trainer.mjs';
export { Run, learningRate, countCorrect, argmax, SHUFFLE } from './run.mjs';
export { permutation, PCG32, EPOCH, SPLIT, SUBSET } from './order.mjs';
export { resizeBilinear, toInput, fit } from './preprocess.mjs';
export { parse as parseSafetensors, serialize as serializeSafetensors } from './safetensors.mjs';
export { joinedModel, classNamesMetadata } from './onnx.mjs';
export { splitDataset, subset, checkEveryClassTrains } from './data.mjs';
