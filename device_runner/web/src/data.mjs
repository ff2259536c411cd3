/** Dataset helpers shared by the CLI and the page (device_runner/data.py `split`). */
import { RunnerError } from './errors.mjs';
import { SPLIT, permutation } from './order.mjs';

/** Python's round(): half to even (the split size must equal the Python runner's). */
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The samples `index` (ascending) of a dataset. */
export function subset(data, index) {
  return { ...data, length: index.length, labels: index.map((i) => data.labels[i]), image: (i) => data.image(index[i]), files: data.files ? index.map((i) => data.files[i]) : undefined };
}

/** (train, validation): a seeded random `fraction` of the samples goes to validation, as the Python runner. */
export function splitDataset(data, fraction, seed) {
  if (!(fraction > 0 && fraction < 1)) throw new RunnerError(`--val-split must be in (0, 1), got ${fraction}`);
  const order = permutation(data.length, seed, SPLIT);
  const nVal = Math.max(1, roundHalfEven(data.length * fraction));
  if (nVal >= data.length) throw new RunnerError(`a dataset of ${data.length} samples is too small to split off ${Math.round(fraction * 100)}% for validation`);
  const sorted = (a) => Array.from(a).sort((x, y) => x - y);
  return [subset(data, sorted(order.subarray(nVal))), subset(data, sorted(order.subarray(0, nVal)))];
}

/** Every class keeps at least one training image (a split can take a small class's only photos). */
export function checkEveryClassTrains(train) {
  const counts = new Array(train.classes.length).fill(0);
  for (const y of train.labels) counts[y] += 1;
  const empty = train.classes.filter((c, i) => counts[i] === 0);
  if (empty.length) {
    throw new RunnerError(`no training images left for ${empty.map((c) => `'${c}'`).join(', ')} after the validation split; add photos or lower the validation fraction`);
  }
}
