// Tokenize texts with transformers.js, fully offline, the way a JavaScript app loads a pema-export bundle.
// Usage: node tests/js/tokenize.mjs REQUEST.json  where REQUEST = {"folders": [abs paths], "texts": [strings]}
// Prints {"<folder>": [[ids of text 0], [ids of text 1], ...], ...} as JSON on stdout.
import { readFileSync } from 'node:fs';
import { openBundle } from './offline.mjs';

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const result = {};
for (const folder of request.folders) {
  const { encode } = await openBundle(folder);
  result[folder] = request.texts.map(encode);
}
process.stdout.write(JSON.stringify(result));
