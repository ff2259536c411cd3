/**
 * Image preprocessing identical to the Python runner's (device_runner/data.py `preprocess`): RGB uint8 ->
 * resize to R x R with Pillow's BILINEAR filter -> float32 (x / 255 - mean) / std, NCHW.
 *
 * `resizeBilinear` reproduces Pillow's Image.resize(..., BILINEAR) bit for bit (libImaging/Resample.c,
 * Pillow >= 7 without reducing_gap): a separable triangle filter whose support widens by the scale when
 * shrinking (anti-aliasing), coefficients normalised then quantised to 22-bit fixed point
 * (PRECISION_BITS = 32 - 8 - 2), the horizontal pass first into uint8 rows (only the rows the vertical pass
 * reads), rounding by adding 2^21 and clipping to 0..255. A browser canvas's drawImage filters differently
 * per browser, which is why the page uses this too. tests/test_web.py compares it with Pillow.
 */
import { RunnerError } from './errors.mjs';

const PRECISION_BITS = 22;

/** Pillow precompute_coeffs for one axis: {ksize, bounds: Int32Array [out*2] (xmin, count), kk: Int32Array} */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale; // bilinear support = 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      let t = (x + xmin - center + 0.5) * ss;
      if (t < 0) t = -t;
      const w = t < 1.0 ? 1.0 - t : 0.0;
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      const v = x < xmax ? (ww !== 0.0 ? k[x] / ww : k[x]) : 0;
      kk[xx * ksize + x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

const clip8 = (ss) => { const v = Math.floor(ss / (1 << PRECISION_BITS)); return v < 0 ? 0 : v > 255 ? 255 : v; };

/**
 * @param {Uint8Array|Uint8ClampedArray} src interleaved pixels [h, w, c]
 * @param {number} w @param {number} h @param {number} c channels per pixel (all are filtered alike)
 * @param {number} ow @param {number} oh output size in pixels
 * @returns {Uint8Array} [oh, ow, c]
 */
export function resizeBilinear(src, w, h, c, ow, oh) {
  if (w === ow && h === oh) return Uint8Array.from(src);
  const horiz = coefficients(w, ow), vert = coefficients(h, oh);
  const needH = w !== ow, needV = h !== oh;
  const first = vert.bounds[0];
  const last = vert.bounds[oh * 2 - 2] + vert.bounds[oh * 2 - 1];
  let img = src, iw = w, rowOffset = 0;
  const half = 1 << (PRECISION_BITS - 1);
  if (needH) {
    const rows = needV ? last - first : h;
    const y0 = needV ? first : 0;
    const tmp = new Uint8Array(rows * ow * c);
    for (let y = 0; y < rows; y++) {
      const inRow = (y + y0) * w * c;
      for (let xx = 0; xx < ow; xx++) {
        const xmin = horiz.bounds[xx * 2], xmax = horiz.bounds[xx * 2 + 1], kb = xx * horiz.ksize;
        for (let ch = 0; ch < c; ch++) {
          let ss = half;
          for (let x = 0; x < xmax; x++) ss += src[inRow + (x + xmin) * c + ch] * horiz.kk[kb + x];
          tmp[(y * ow + xx) * c + ch] = clip8(ss);
        }
      }
    }
    img = tmp; iw = ow; rowOffset = needV ? first : 0;
  }
  if (!needV) return img instanceof Uint8Array && img !== src ? img : Uint8Array.from(img);
  const out = new Uint8Array(oh * ow * c);
  for (let yy = 0; yy < oh; yy++) {
    const ymin = vert.bounds[yy * 2] - rowOffset, ymax = vert.bounds[yy * 2 + 1], kb = yy * vert.ksize;
    for (let x = 0; x < iw * c; x++) {
      let ss = half;
      for (let y = 0; y < ymax; y++) ss += img[(y + ymin) * iw * c + x] * vert.kk[kb + y];
      out[yy * ow * c + x] = clip8(ss);
    }
  }
  return out;
}

/** Python's round(): half to even. */
const roundHalfEven = (x) => { const r = Math.round(x); return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r; };

/**
 * An image fitted to R x R as the manifest's `preprocess` says (device_runner/data.py `fit`): shorter-side =
 * torchvision's Resize(floor(R / crop_fraction)) + CenterCrop(R); squash = straight to R x R. Exports without
 * the field are squash.
 * @param {{data: Uint8Array, width: number, height: number, channels: number}} im
 * @returns {{data: Uint8Array, width: number, height: number, channels: number}} R x R
 */
export function fit(im, resolution, spec) {
  spec = spec ?? { resize: 'squash' }; // exports without the field
  const R = resolution, c = im.channels;
  if (spec.resize === 'squash') return { data: resizeBilinear(im.data, im.width, im.height, c, R, R), width: R, height: R, channels: c };
  if (spec.resize !== 'shorter-side') throw new RunnerError(`unknown preprocess ${JSON.stringify(spec)} in the manifest (this runner knows shorter-side and squash)`);
  const size = Math.floor(R / spec.crop_fraction);
  const { width: w, height: h } = im;
  const [nw, nh] = w <= h ? [size, Math.trunc(size * h / w)] : [Math.trunc(size * w / h), size];
  const resized = resizeBilinear(im.data, w, h, c, nw, nh);
  const top = roundHalfEven((nh - R) / 2), left = roundHalfEven((nw - R) / 2);
  const out = new Uint8Array(R * R * c);
  for (let y = 0; y < R; y++) out.set(resized.subarray(((top + y) * nw + left) * c, ((top + y) * nw + left + R) * c), y * R * c);
  return { data: out, width: R, height: R, channels: c };
}

/**
 * Normalised model input of decoded images.
 * @param {Array<{data: Uint8Array, width: number, height: number, channels: number}>} images R x R (fitted by
 *   `fit`), RGB (3) or grey (1) interleaved uint8 pixels
 * @param {number} resolution R
 * @param {number[]} mean @param {number[]} std per RGB channel (manifest.normalization)
 * @returns {Float32Array} [N, 3, R, R], every step rounded to float32 as numpy does
 */
export function toInput(images, resolution, mean, std) {
  const R = resolution, plane = R * R;
  const out = new Float32Array(images.length * 3 * plane);
  const f = Math.fround;
  const m = mean.map(f), s = std.map(f);
  images.forEach((im, n) => {
    const c = im.channels, px = im.data;
    if (im.width !== R || im.height !== R) throw new Error(`toInput takes ${R} x ${R} images (fit() them first), got ${im.width} x ${im.height}`);
    for (let ch = 0; ch < 3; ch++) {
      const base = (n * 3 + ch) * plane, sc = c === 1 ? 0 : ch;
      for (let i = 0; i < plane; i++) out[base + i] = f(f(f(px[i * c + sc] / 255) - m[ch]) / s[ch]);
    }
  });
  return out;
}
