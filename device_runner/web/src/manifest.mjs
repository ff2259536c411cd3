/**
 * Load an export folder for the portable step and verify it (docs/MANIFEST.md), as the Python runner's
 * device_runner/manifest.py does: format, required fields, and every file the portable step reads against
 * the manifest's sha256. Works from any byte source: the Node CLI reads files, the page reads a served folder
 * or files a person picked.
 */
import { RunnerError } from './errors.mjs';

export const FORMAT = 'mobiletl-export/2';
/** Files the portable step reads (manifest `files` roles); an export may ship the others too. */
export const PORTABLE_FILES = ['backbone', 'train_step', 'eval_step', 'inference', 'parameters'];

const REQUIRED = {
  model: 'string', method: 'string', top_k: 'number', num_classes: 'number', resolution: 'number',
  normalization: 'object', optimizer: 'object', files: 'object', sha256: 'object', inputs: 'object',
  trainable: 'object', portable: 'object',
};

const hex = (digest) => Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');

/** SHA-256 by WebCrypto: browsers (secure contexts: https, localhost) and Node. */
async function webCryptoSha256(bytes) {
  const subtle = globalThis.crypto?.subtle ?? (typeof process !== 'undefined' ? (await import('node:crypto')).webcrypto.subtle : null);
  if (!subtle) throw new RunnerError('cannot verify the export: no WebCrypto here (a page over plain http to another machine); pass a sha256 function');
  return hex(new Uint8Array(await subtle.digest('SHA-256', bytes)));
}

/** Field checks with one message naming the first problem (not a TypeError later). */
export function checkManifest(manifest, where = 'manifest.json') {
  if (!manifest || typeof manifest !== 'object' || manifest.format !== FORMAT) {
    const found = manifest && typeof manifest === 'object' ? manifest.format : typeof manifest;
    throw new RunnerError(`${where} has format ${JSON.stringify(found)}; this runner reads ${FORMAT} (export the folder again with this version of mobiletl-export)`);
  }
  for (const [key, kind] of Object.entries(REQUIRED)) {
    if (typeof manifest[key] !== kind || manifest[key] === null) {
      throw new RunnerError(`${where} is malformed: field '${key}' is missing or not a ${kind}`);
    }
  }
  const lr = manifest.optimizer.lr;
  if (typeof lr !== 'number' || !(lr > 0)) throw new RunnerError(`${where} is malformed: optimizer.lr must be a positive number`);
  const norm = manifest.normalization;
  if (!['mean', 'std'].every((k) => Array.isArray(norm[k]) && norm[k].length === 3) || !norm.std.every((v) => v > 0)) {
    throw new RunnerError(`${where} is malformed: normalization needs 3 means and 3 positive stds`);
  }
  const missing = PORTABLE_FILES.filter((role) => !(role in manifest.files));
  if (missing.length) throw new RunnerError(`${where} is malformed: files lacks ${missing.join(', ')}`);
  const p = manifest.portable;
  if (!Array.isArray(p.parameters) || !p.train_step || !p.eval_step || !p.inference || !p.optimizer) {
    throw new RunnerError(`${where} is malformed: the 'portable' section is incomplete`);
  }
  if (manifest.target && manifest.target.nchwc_block > 0) {
    throw new RunnerError(`the export was made with --target ${manifest.target.name} (x86 NCHWc kernels); export it again with --target generic for this runtime`);
  }
}

/**
 * @param {(name: string) => Promise<Uint8Array|null>} read bytes of a file of the export folder, null if absent
 * @param {string} where the folder's name for messages
 * @param {{sha256?: (bytes: Uint8Array) => Promise<string>}} options hex SHA-256; default WebCrypto (the page
 *   passes @noble/hashes where WebCrypto is missing: plain http to a phone is not a secure context)
 * @returns {Promise<{manifest: object, files: Object<string, Uint8Array>}>} files by role (PORTABLE_FILES)
 * @throws {RunnerError} missing manifest or file, malformed manifest, sha256 mismatch
 */
export async function loadExport(read, where = 'export folder', { sha256 = webCryptoSha256 } = {}) {
  const raw = await read('manifest.json');
  if (!raw) throw new RunnerError(`${where} has no manifest.json: not a mobiletl-export artifact folder`);
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(raw));
  } catch {
    throw new RunnerError(`${where}/manifest.json is corrupt (not JSON)`);
  }
  checkManifest(manifest, `${where}/manifest.json`);
  const files = {};
  for (const role of PORTABLE_FILES) {
    const name = manifest.files[role];
    const bytes = await read(name);
    if (!bytes) throw new RunnerError(`artifact file missing: ${where}/${name}`);
    const want = manifest.sha256[name];
    if (!want || (await sha256(bytes)) !== want) {
      throw new RunnerError(`artifact file corrupt: ${where}/${name} does not match the manifest's sha256`);
    }
    files[role] = bytes;
  }
  return { manifest, files };
}
