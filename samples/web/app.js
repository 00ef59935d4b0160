// The page's one code path: read the bundle's manifest, load a model file with transformers.js, tokenize and run
// one text at a time. The UI and window.pemaPredict (what tests/test_web_browser.py calls) both go through predict().
import { env, AutoTokenizer, AutoModel } from '/vendor/transformers/transformers.js';

// Everything comes from the server that served this page: no hub, no CDN.
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = '/models/';
env.useBrowserCache = false; // a bundle re-exported to the same folder must not be answered from a stale cache
env.useWasmCache = false;
env.backends.onnx.wasm.wasmPaths = {
  mjs: '/vendor/ort/ort-wasm-simd-threaded.asyncify.mjs',
  wasm: '/vendor/ort/ort-wasm-simd-threaded.asyncify.wasm',
};
// Threads need a cross-origin-isolated page; one thread also gives the same numbers on every run.
env.backends.onnx.wasm.numThreads = 1;

const BUNDLE = 'bundle'; // serve.py serves BUNDLE_DIR at /models/bundle/
const DTYPE_FILES = { fp32: 'onnx/model.onnx', q8: 'onnx/model_quantized.onnx', fp16: 'onnx/model_fp16.onnx' };
const TASKS = {
  'text-classification': { output: 'logits', action: 'Classify' },
  'feature-extraction': { output: 'sentence_embedding', action: 'Search' },
};

const $ = (id) => document.getElementById(id);
const controls = ['text', 'candidates', 'dtype', 'go'].map($);

async function fetchJson(path) {
  const response = await fetch(`${env.localModelPath}${BUNDLE}/${path}`);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status} (is this a pema-export web bundle?)`);
  return response.json();
}

/** What the bundle is, from its manifest and config.json: the task, the output to read, labels, the model files. */
async function readBundle() {
  const [manifest, config] = await Promise.all([fetchJson('pema-manifest.json'), fetchJson('config.json')]);
  const task = manifest.model?.task;
  if (!TASKS[task]) throw new Error(`this page runs classifiers and sentence encoders; the bundle's task is "${task}"`);
  const dtypes = Object.keys(DTYPE_FILES).filter((dtype) => DTYPE_FILES[dtype] in (manifest.files ?? {}));
  if (dtypes.length === 0) throw new Error('the bundle holds no onnx/model*.onnx: export it with --target web');
  const labels = task === 'text-classification'
    ? Object.keys(config.id2label).sort((a, b) => a - b).map((id) => config.id2label[id])
    : null;
  return { task, ...TASKS[task], labels, dtypes, manifest };
}

const bundle = readBundle();
const tokenizer = AutoTokenizer.from_pretrained(BUNDLE);
const models = new Map(); // dtype -> Promise of the loaded model

function loadModel(dtype, onProgress = () => {}) {
  if (!models.has(dtype)) {
    const loading = AutoModel.from_pretrained(BUNDLE, { dtype, device: 'wasm', progress_callback: onProgress });
    loading.catch(() => models.delete(dtype)); // a failed load is tried again next time
    models.set(dtype, loading);
  }
  return models.get(dtype);
}

function softmax(logits) {
  const top = Math.max(...logits);
  const exps = logits.map((value) => Math.exp(value - top));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((value) => value / sum);
}

/**
 * Run each text alone (no padding, as an app does) through the bundle's model file for `dtype`.
 * Returns per text: the tokenizer's ids, the output's values, and for a classifier the label and probabilities.
 */
export async function predict(texts, dtype) {
  const info = await bundle;
  if (!info.dtypes.includes(dtype)) throw new Error(`the bundle has no ${dtype} model (it has ${info.dtypes.join(', ')})`);
  const [tokenize, model] = await Promise.all([tokenizer, loadModel(dtype)]);
  const results = [];
  for (const text of texts) {
    const inputs = tokenize(text, { truncation: true }); // at tokenizer_config.json's model_max_length
    const outputs = await model(inputs);
    const output = outputs[info.output];
    if (!output) throw new Error(`the model has no output "${info.output}" (it has ${Object.keys(outputs).join(', ')})`);
    const result = { text, ids: Array.from(inputs.input_ids.data, Number), values: Array.from(output.data) };
    if (info.labels) {
      result.probabilities = softmax(result.values);
      result.label = info.labels[result.probabilities.indexOf(Math.max(...result.probabilities))];
    }
    results.push(result);
  }
  return results;
}
window.pemaPredict = predict;

// --- the UI ---

function setBusy(busy) {
  for (const control of controls) control.disabled = busy;
}

function showError(error) {
  console.error(error);
  $('error').textContent = `Error: ${error?.message ?? error}`;
  $('error').hidden = false;
  $('status').textContent = '';
  $('progress').hidden = true;
}

function size(bytes) {
  return bytes < 1e6 ? `${(bytes / 1e3).toFixed(0)} kB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

async function switchModel(dtype) {
  setBusy(true);
  $('error').hidden = true;
  $('result').hidden = true;
  const files = {}; // file -> {loaded, total}: transformers.js reports progress per file
  const status = `Loading model (${dtype})…`;
  $('status').textContent = status;
  $('progress').hidden = false;
  $('progress').removeAttribute('value'); // indeterminate until the first bytes arrive
  const started = performance.now();
  try {
    await loadModel(dtype, (event) => {
      if (event.status !== 'progress' || !event.total) return;
      files[event.file] = event;
      const loaded = Object.values(files).reduce((sum, file) => sum + file.loaded, 0);
      const total = Object.values(files).reduce((sum, file) => sum + file.total, 0);
      $('progress').value = (100 * loaded) / total;
      $('status').textContent = `${status} ${size(loaded)} of ${size(total)}`;
    });
    await tokenizer;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    $('status').textContent = `Ready: ${dtype} model (${DTYPE_FILES[dtype]}) loaded in ${seconds} s.`;
    $('progress').hidden = true;
    setBusy(false);
    $('text').focus();
  } catch (error) {
    showError(error);
    $('dtype').disabled = false; // another file may load
  }
}

function cell(tag, text, className) {
  const element = document.createElement(tag);
  element.textContent = text;
  if (className) element.className = className;
  return element;
}

function percentRow(name, share, best) {
  const row = document.createElement('tr');
  if (best) row.className = 'best';
  const bar = cell('td', '', 'bar');
  bar.append(cell('span', ''));
  bar.firstChild.style.width = `${(100 * Math.max(share, 0)).toFixed(1)}%`;
  row.append(cell('td', name), bar, cell('td', share.toFixed(4), 'number'));
  return row;
}

function showClassification(result, labels, dtype, milliseconds) {
  const section = $('result');
  const order = result.probabilities.map((p, i) => i).sort((a, b) => result.probabilities[b] - result.probabilities[a]);
  const table = document.createElement('table');
  order.forEach((i, rank) => table.append(percentRow(labels[i], result.probabilities[i], rank === 0)));
  section.replaceChildren(
    cell('p', result.label, 'answer'),
    cell('p', `${dtype}, ${result.ids.length} tokens, ${milliseconds.toFixed(0)} ms. Probabilities (softmax of the logits):`, 'muted'),
    table,
  );
  section.dataset.label = result.label;
}

function cosine(a, b) {
  let dot = 0, normA = 0, normB = 0;
  a.forEach((value, i) => { dot += value * b[i]; normA += value * value; normB += b[i] * b[i]; });
  return dot / Math.sqrt(normA * normB);
}

function showSearch([query, ...candidates], dtype, milliseconds) {
  const section = $('result');
  const scored = candidates.map((c) => ({ text: c.text, score: cosine(query.values, c.values) }))
    .sort((a, b) => b.score - a.score);
  const table = document.createElement('table');
  scored.forEach((c, rank) => table.append(percentRow(c.text, c.score, rank === 0)));
  section.replaceChildren(
    cell('p', scored[0].text, 'answer'),
    cell('p', `nearest sentence, cosine ${scored[0].score.toFixed(4)} (${dtype}, ${milliseconds.toFixed(0)} ms):`, 'muted'),
    table,
  );
  section.dataset.label = scored[0].text;
}

async function onSubmit(event) {
  event.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  const dtype = $('dtype').value;
  const info = await bundle;
  const candidates = info.labels ? [] : $('candidates').value.split('\n').map((s) => s.trim()).filter(Boolean);
  if (!info.labels && candidates.length === 0) return showError(new Error('type at least one sentence to search'));
  setBusy(true);
  $('error').hidden = true;
  $('status').textContent = `Running (${dtype})…`;
  try {
    const started = performance.now();
    const results = await predict([text, ...candidates], dtype);
    const milliseconds = performance.now() - started;
    if (info.labels) showClassification(results[0], info.labels, dtype, milliseconds);
    else showSearch(results, dtype, milliseconds);
    $('result').hidden = false;
    $('status').textContent = `Ready: ${dtype} model (${DTYPE_FILES[dtype]}).`;
  } catch (error) {
    showError(error);
  } finally {
    setBusy(false);
  }
}

async function start() {
  try {
    const info = await bundle;
    const { manifest } = info;
    const vocab = manifest.vocab ? `, ${manifest.vocab.kept.toLocaleString('en')} of ${manifest.vocab.original.toLocaleString('en')} tokens kept` : '';
    const labels = info.labels ? `; labels: ${info.labels.join(', ')}` : '';
    $('bundle').textContent = `${manifest.model.source}, ${info.task} (pema-export ${manifest.pema_export}${vocab})${labels}`;
    $('go').textContent = info.action;
    $('text-label').textContent = info.labels ? 'Text to classify' : 'Search query';
    $('candidates-box').hidden = Boolean(info.labels);
    $('dtype').replaceChildren(...info.dtypes.map((dtype) => {
      const option = cell('option', `${dtype} (${DTYPE_FILES[dtype]})`);
      option.value = dtype;
      return option;
    }));
    $('dtype').value = info.dtypes.includes('q8') ? 'q8' : info.dtypes[0];
    $('dtype').addEventListener('change', () => switchModel($('dtype').value));
    $('ask').addEventListener('submit', onSubmit);
    $('text').addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey) $('ask').requestSubmit();
    });
    await switchModel($('dtype').value);
  } catch (error) {
    showError(error);
  }
}

start();
