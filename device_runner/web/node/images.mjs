/**
 * Class-per-folder image datasets for Node, as the Python runner reads them (device_runner/data.py):
 * one sub-folder per class, class names sorted (code-point order, as Python's sorted()), label = position;
 * files sorted by name; hidden files and folders (names starting with '.') skipped. Decoding by sharp
 * (libvips): EXIF orientation applied, alpha dropped, grey kept as one channel, 8 bits per channel.
 */
import fs from 'node:fs';
import path from 'node:path';
import { RunnerError } from '../src/errors.mjs';

/** What sharp (libvips) decodes; the Python runner also reads BMP and the rarer formats Pillow knows. */
export const IMAGE_SUFFIXES = new Set(['.png', '.jpg', '.jpeg', '.jpe', '.jfif', '.webp', '.gif', '.tif', '.tiff', '.avif']);
const byCodePoint = (a, b) => { const x = [...a], y = [...b]; for (let i = 0; i < Math.min(x.length, y.length); i++) { const d = x[i].codePointAt(0) - y[i].codePointAt(0); if (d) return d; } return x.length - y.length; };

let sharpModule = null;
async function sharp() {
  if (!sharpModule) sharpModule = (await import('sharp')).default;
  return sharpModule;
}

/** Decode one image file to {data: Uint8Array, width, height, channels (1 or 3)}. */
export async function decodeFile(file) {
  const s = await sharp();
  try {
    // rotate(): apply the EXIF orientation; ignoreIcc: pixels as stored, as Pillow and the page read them
    const img = s(file, { failOn: 'error', ignoreIcc: true }).rotate();
    const meta = await img.metadata(); // the input's header (same file handle as the pipeline)
    const grey = meta.channels <= 2; // grey or grey + alpha: one channel, broadcast to RGB later (as Pillow's L)
    const pipeline = grey ? img.removeAlpha().toColourspace('b-w') : img.removeAlpha().toColourspace('srgb');
    const { data, info } = await pipeline.raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    if (info.width < 8 || info.height < 8) throw new RunnerError(`${file}: image of ${info.height} x ${info.width} px is too small (at least 8 x 8)`);
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height, channels: info.channels };
  } catch (e) {
    if (e instanceof RunnerError) throw e;
    throw new RunnerError(`cannot decode image ${file}: ${String(e.message || e).split('\n')[0]}`);
  }
}

/**
 * @param {string} root class-per-folder directory
 * @param {number} numClasses the export's K
 * @returns {{length, labels: number[], classes: string[], files: string[], image: (i) => Promise<object>, source}}
 * @throws {RunnerError} no such folder, no class folders, a class without images, more classes than K
 */
export function loadFolder(root, numClasses) {
  let entries;
  try {
    entries = fs.readdirSync(root, { withFileTypes: true });
  } catch (e) {
    throw new RunnerError(e.code === 'ENOENT' ? `data not found: ${root}` : e.code === 'ENOTDIR' ? `--data ${root} is a file; this runner reads a class-per-folder image directory` : `cannot read ${root}: ${e.message}`);
  }
  const isDir = (p) => { try { return fs.statSync(p).isDirectory(); } catch { return false; } }; // follows symlinks
  const isFile = (p) => { try { return fs.statSync(p).isFile(); } catch { return false; } };
  // folder names as found; class names in Unicode NFC (a folder copied from macOS is NFD)
  const folders = entries.filter((e) => !e.name.startsWith('.') && isDir(path.join(root, e.name))).map((e) => e.name)
    .sort((a, b) => byCodePoint(a.normalize('NFC'), b.normalize('NFC')));
  const classes = folders.map((f) => f.normalize('NFC'));
  if (!classes.length) throw new RunnerError(`${root} has no class sub-folders (expected one folder of images per class)`);
  if (classes.length < 2) throw new RunnerError(`${root} has ${classes.length} class folder${classes.length ? ` (${classes[0]})` : ''}; a classifier needs at least 2`);
  if (classes.length > numClasses) throw new RunnerError(`${root} has ${classes.length} classes (${classes.join(', ')}) but the export has ${numClasses} outputs; export with --num-classes ${classes.length}`);
  const files = [], labels = [];
  folders.forEach((folderName, label) => {
    const dir = path.join(root, folderName);
    const names = fs.readdirSync(dir).filter((f) => !f.startsWith('.') && IMAGE_SUFFIXES.has(path.extname(f).toLowerCase()) && isFile(path.join(dir, f))).sort(byCodePoint);
    if (!names.length) throw new RunnerError(`class folder ${dir} has no images (${[...IMAGE_SUFFIXES].join(' ')}): add images or remove the folder`);
    for (const f of names) { files.push(path.join(dir, f)); labels.push(label); }
  });
  return { length: files.length, labels, classes, files, source: root, image: (i) => decodeFile(files[i]) };
}

/**
 * Check every file once before training (cheap: a 1/8-scale decode for JPEG, via libvips' shrink-on-load, which
 * finds truncated files). Returns [[file, reason], ...] of the files that cannot be decoded.
 */
export async function findBadImages(data) {
  const s = await sharp();
  const bad = [];
  for (const file of data.files) {
    try {
      const meta = await s(file).metadata();
      if (meta.width < 8 || meta.height < 8) { bad.push([file, `${meta.width} x ${meta.height} px is too small (at least 8 x 8)`]); continue; }
      await s(file, { failOn: 'truncated' }).resize(8, 8, { fit: 'inside' }).raw().toBuffer();
    } catch (e) {
      bad.push([file, String(e.message || e).split('\n')[0]]);
    }
  }
  return bad;
}

/** The dataset without `files` (the same labels and class names); a class left empty is an error. */
export function withoutFiles(data, files) {
  const drop = new Set(files);
  const keep = data.files.map((f, i) => i).filter((i) => !drop.has(data.files[i]));
  const labels = keep.map((i) => data.labels[i]);
  data.classes.forEach((c, label) => {
    if (!labels.includes(label)) throw new RunnerError(`class folder ${path.join(data.source, c)} has no readable images`);
  });
  const kept = keep.map((i) => data.files[i]);
  return { ...data, length: kept.length, files: kept, labels, image: (i) => decodeFile(kept[i]) };
}
