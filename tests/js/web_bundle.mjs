// Load a pema-export web bundle with transformers.js, fully offline, as a JavaScript app would, and run it.
// Usage: node tests/js/web_bundle.mjs REQUEST.json
//   REQUEST = {"folder": abs path, "texts": [strings], "ids": [[ids of text 0], ...], "dtypes": ["fp32", "q8"]}
// Prints JSON: {"ids": [[transformers.js tokenizer ids per text]], "outputs": {dtype: {"name": output, "values": [[...]]}}}
// The model runs on the ids given (the Python tokenizer's), one text per call, so the comparison is of the models alone.
import { readFileSync } from 'node:fs';
import { AutoModel, Tensor } from '@huggingface/transformers';
import { openBundle } from './offline.mjs';

const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { name, encode } = await openBundle(request.folder);
const result = { ids: request.texts.map(encode), outputs: {} };

const int64 = (ids) => new Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
for (const dtype of request.dtypes) {
  const model = await AutoModel.from_pretrained(name, { dtype, device: 'cpu' });
  let outputName = null;
  const values = [];
  for (const ids of request.ids) {
    const inputs = {
      input_ids: int64(ids),
      attention_mask: int64(ids.map(() => 1)),
      token_type_ids: int64(ids.map(() => 0)),
    };
    const output = await model(inputs);
    outputName ??= ['logits', 'sentence_embedding', 'last_hidden_state'].find((key) => key in output);
    values.push(Array.from(output[outputName].data, Number));
  }
  result.outputs[dtype] = { name: outputName, values };
  await model.dispose();
}
process.stdout.write(JSON.stringify(result));
