/**
 * safetensors read/write for float32 tensors (format: github.com/huggingface/safetensors): an 8-byte
 * little-endian header length, a UTF-8 JSON header
 * {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {str: str}},
 * then the raw little-endian data (offsets relative to its start). The Python runner's checkpoints use it
 * (docs/MANIFEST.md); `safetensors.numpy.load_file` reads what `serialize` writes (tests/test_web.py).
 */
import { RunnerError } from './errors.mjs';

const BYTES = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

/**
 * @param {Uint8Array} bytes a whole file
 * @param {string} what file name for messages
 * @returns {{tensors: Object<string, {shape: number[], data: Float32Array}>, metadata: Object<string,string>}}
 * Only F32 tensors are returned as data; others raise RunnerError (the runner's files hold float32 only).
 * @throws {RunnerError} when the bytes are not a complete safetensors file
 */
export function parse(bytes, what = 'safetensors file') {
  if (bytes.byteLength < 8) throw new RunnerError(`${what} is truncated (${bytes.byteLength} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  if (8 + n > bytes.byteLength) throw new RunnerError(`${what} is truncated or not a safetensors file`);
  let header;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch {
    throw new RunnerError(`${what} is not a safetensors file (bad header)`);
  }
  const dataStart = 8 + n, dataLen = bytes.byteLength - dataStart;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [begin, end] = info.data_offsets || [];
    const count = (info.shape || []).reduce((a, b) => a * b, 1);
    if (!(info.dtype in BYTES) || !(begin >= 0) || !(end <= dataLen) || end - begin !== count * BYTES[info.dtype]) {
      throw new RunnerError(`${what}: tensor ${name} is truncated or malformed`);
    }
    if (info.dtype !== 'F32') throw new RunnerError(`${what}: tensor ${name} is ${info.dtype}, expected F32`);
    // copy: the data may not be 4-byte aligned in `bytes`, and little-endian order is guaranteed on copy
    const data = new Float32Array(count);
    const src = new DataView(bytes.buffer, bytes.byteOffset + dataStart + begin, end - begin);
    for (let i = 0; i < count; i++) data[i] = src.getFloat32(4 * i, true);
    tensors[name] = { shape: info.shape, data };
  }
  return { tensors, metadata: header.__metadata__ || {} };
}

/**
 * @param {Array<[string, number[], Float32Array]>} tensors (name, shape, data) in file order
 * @param {Object<string,string>} metadata
 * @returns {Uint8Array} the file's bytes (header padded with spaces to a multiple of 8 bytes)
 */
export function serialize(tensors, metadata = {}) {
  const header = { __metadata__: metadata };
  let offset = 0;
  for (const [name, shape, data] of tensors) {
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + 4 * data.length] };
    offset += 4 * data.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  const out = new Uint8Array(8 + padded + offset);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(padded), true);
  out.fill(0x20, 8, 8 + padded);
  out.set(json, 8);
  let p = 8 + padded;
  for (const [, , data] of tensors) {
    for (let i = 0; i < data.length; i++, p += 4) view.setFloat32(p, data[i], true);
  }
  return out;
}
