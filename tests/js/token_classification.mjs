// Run transformers.js's token-classification pipeline on a pema-export web bundle, fully offline, as an app would.
// Usage: node tests/js/token_classification.mjs REQUEST.json
//   REQUEST = {"folder": abs path, "texts": [strings], "dtypes": ["fp32", "q8"]}
// Prints JSON: {"ids": [[tokenizer ids per text]], "entities": {dtype: [[{entity, score, index, word} per text]]}}:
// the pipeline's raw per-token answers (aggregation "none"; "O" ignored, as the pipeline does by default).
import { readFileSync } from 'node:fs';
import { pipeline } from '@huggingface/transformers';
import { openBundle } from './offline.mjs';

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { name, encode } = await openBundle(request.folder);
const result = { ids: request.texts.map(encode), entities: {} };
for (const dtype of request.dtypes) {
  const classify = await pipeline('token-classification', name, { dtype, device: 'cpu' });
  const answers = [];
  for (const text of request.texts) answers.push(await classify(text)); // one text per call, as an app runs it
  result.entities[dtype] = answers;
  await classify.dispose();
}
process.stdout.write(JSON.stringify(result));
