/**
 * The joined `image -> logits` model of a run, written without an ONNX library (same bytes as the Python
 * runner's device_runner/inference.py; docs/MANIFEST.md "Completing inference.onnx").
 *
 * inference.onnx = ModelProto bytes [0, trainable_offset) + one more ModelProto.graph field (7) holding only
 * GraphProto.initializer (5) entries. The trained model is bytes[:offset] + that chunk with trained values
 * (TensorProto: dims (1), data_type (2) = FLOAT, name (8), raw_data (9) little-endian float32) + the
 * metadata_props (14) entry `class_names` (StringStringEntryProto key (1), value (2); JSON list).
 */
const enc = new TextEncoder();

function varint(n) {
  const out = [];
  for (;;) {
    const byte = n % 128;
    n = Math.floor(n / 128);
    out.push(n ? byte | 0x80 : byte);
    if (!n) return Uint8Array.from(out);
  }
}

function concat(parts) {
  const total = parts.reduce((s, p) => s + p.length, 0);
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}

/** A length-delimited protobuf field (wire type 2). */
export function field(number, payload) {
  return concat([varint(number * 8 + 2), varint(payload.length), payload]);
}

/** TensorProto bytes of a float32 tensor (onnx's field order: dims, data_type, name, raw_data). */
export function tensorProto(name, shape, data) {
  const raw = new Uint8Array(4 * data.length);
  const view = new DataView(raw.buffer);
  for (let i = 0; i < data.length; i++) view.setFloat32(4 * i, data[i], true);
  const dims = shape.map((d) => concat([varint(8), varint(d)]));
  return concat([...dims, varint(16), varint(1), field(8, enc.encode(name)), field(9, raw)]);
}

/** ModelProto field 14 entries (metadata_props). */
export function metadataChunk(props) {
  return concat(Object.entries(props).map(([k, v]) => field(14, concat([field(1, enc.encode(k)), field(2, enc.encode(v))]))));
}

/** The model's metadata: `class_names`, a compact JSON list in label order (as the Python runner writes it). */
export function classNamesMetadata(names) {
  return { class_names: JSON.stringify(names) };
}

/**
 * @param {Uint8Array} inference the export's inference.onnx
 * @param {object} manifest the export's manifest (portable.parameters, portable.inference.trainable_offset)
 * @param {Float32Array} params flat trainable parameters [P]
 * @param {string[]|null} classNames label order, written as metadata `class_names`
 * @returns {Uint8Array} the joined model's bytes
 */
export function joinedModel(inference, manifest, params, classNames = null) {
  const spec = manifest.portable;
  const head = inference.subarray(0, spec.inference.trainable_offset);
  const inits = spec.parameters.map((e) => field(5, tensorProto(e.name, e.shape, params.subarray(e.offset, e.offset + e.size))));
  const parts = [head, field(7, concat(inits))];
  if (classNames) parts.push(metadataChunk(classNamesMetadata(classNames)));
  return concat(parts);
}
