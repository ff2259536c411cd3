// Test worker for tests/test_web.py: reads a JSON request on stdin, runs the JavaScript runner's library on it,
// prints a JSON answer (binary payloads base64). Requests: {op: "permutation" | "resize" | "input" |
// "safetensors-write" | "safetensors-read", ...}.
import { permutation, resizeBilinear, toInput, fit, serializeSafetensors, parseSafetensors } from '../device_runner/web/src/index.mjs';

const b64 = (u8) => Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength).toString('base64');
const bytes = (s) => { const b = Buffer.from(s, 'base64'); return new Uint8Array(b.buffer, b.byteOffset, b.length); };
const f32 = (s) => { const b = bytes(s); return new Float32Array(b.slice().buffer); };

let input = '';
for await (const chunk of process.stdin) input += chunk;
const req = JSON.parse(input);
const ops = {
  permutation: (r) => r.cases.map(([n, seed, stream]) => Array.from(permutation(n, seed, stream))),
  resize: (r) => r.cases.map(([w, h, c, ow, oh, px]) => b64(resizeBilinear(bytes(px), w, h, c, ow, oh))),
  input: (r) => b64(toInput(r.images.map(([w, h, c, px]) => fit({ width: w, height: h, channels: c, data: bytes(px) }, r.resolution, r.spec)), r.resolution, r.mean, r.std)),
  'safetensors-write': (r) => b64(serializeSafetensors(r.tensors.map(([name, shape, data]) => [name, shape, f32(data)]), r.metadata)),
  'safetensors-read': (r) => {
    const { tensors, metadata } = parseSafetensors(bytes(r.file));
    return { metadata, tensors: Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, [t.shape, b64(t.data)]])) };
  },
};
process.stdout.write(JSON.stringify(ops[req.op](req)));
