// Run transformers.js's token-classification pipeline on a pema-export web bundle, fully offline, as an app would.
// Usage: node tests/js/token_classification.mjs REQUEST.json
//   REQUEST = {"folder": abs path, "texts": [strings], "dtypes": ["fp32", "q8"]}
// Prints JSON: {"ids": [[tokenizer ids per text]], "entities": {dtype: [[{entity, score, index, word} per text]]}}:
// the pipeline's raw per-token answers (aggregation "none"; "O" ignored, as the pipeline does by default).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { env, pipeline, AutoTokenizer } from '@huggingface/transformers';

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useFSCache = false;
env.useBrowserCache = false;

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
env.localModelPath = path.dirname(request.folder) + path.sep;
const name = path.basename(request.folder);

const tokenizer = await AutoTokenizer.from_pretrained(name);
const result = { ids: request.texts.map((text) => Array.from(tokenizer.encode(text), Number)), entities: {} };
for (const dtype of request.dtypes) {
  const classify = await pipeline('token-classification', name, { dtype, device: 'cpu' });
  const answers = [];
  for (const text of request.texts) answers.push(await classify(text)); // one text per call, as an app runs it
  result.entities[dtype] = answers;
  await classify.dispose();
}
process.stdout.write(JSON.stringify(result));
