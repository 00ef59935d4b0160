// Run one model file with onnxruntime-web's WebAssembly build in Node: what a browser runs, without the browser.
// Usage: node tests/js/onnxruntime_web.mjs REQUEST.json
//   REQUEST = {"model": abs path of an .onnx file, "ids": [[ids of text 0], ...], "output": "logits"}
// Prints JSON: {"values": [[the output of text 0, flattened], ...]}, one text per run, one thread.
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-web';

ort.env.wasm.numThreads = 1;
const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const session = await ort.InferenceSession.create(request.model);
const int64 = (ids) => new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
const values = [];
for (const ids of request.ids) {
  const feeds = { input_ids: int64(ids), attention_mask: int64(ids.map(() => 1)) };
  if (session.inputNames.includes('token_type_ids')) feeds.token_type_ids = int64(ids.map(() => 0));
  const outputs = await session.run(feeds);
  values.push(Array.from(outputs[request.output].data, Number));
}
process.stdout.write(JSON.stringify({ values }));
