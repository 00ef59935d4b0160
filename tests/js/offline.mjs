// transformers.js as an offline app runs it: local files only, no cache; and a bundle folder opened by its name.
import path from 'node:path';
import { env, AutoTokenizer } from '@huggingface/transformers';

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useFSCache = false;
env.useBrowserCache = false;

// {name, tokenizer, encode(text) -> [ids]} for the bundle in `folder`; models load by `name` afterwards
export async function openBundle(folder) {
  env.localModelPath = path.dirname(folder) + path.sep;
  const name = path.basename(folder);
  const tokenizer = await AutoTokenizer.from_pretrained(name);
  return { name, tokenizer, encode: (text) => Array.from(tokenizer.encode(text), Number) };
}
