// Tokenize texts with transformers.js, fully offline, the way a JavaScript app loads a pema-export bundle.
// Usage: node tests/js/tokenize.mjs REQUEST.json  where REQUEST = {"folders": [abs paths], "texts": [strings]}
// Prints {"<folder>": [[ids of text 0], [ids of text 1], ...], ...} as JSON on stdout.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { env, AutoTokenizer } from '@huggingface/transformers';

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useFSCache = false;
env.useBrowserCache = false;

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const result = {};
for (const folder of request.folders) {
  env.localModelPath = path.dirname(folder) + path.sep;
  const tokenizer = await AutoTokenizer.from_pretrained(path.basename(folder));
  result[folder] = request.texts.map((text) => Array.from(tokenizer.encode(text), Number));
}
process.stdout.write(JSON.stringify(result));
