"""Every Unicode code point through the in-graph tokenizer and through tokenizers: where do they differ?

    .venv/bin/python benchmarks/string_input_sweep.py [--family wordpiece bpe unigram]

Per family: all-MiniLM-L6-v2's tokenizer (WordPiece, the original 30,522 tokens), the byte-level BPE and the
XLM-R-style SentencePiece Unigram tokenizers the tests train on the samples (Unigram in both layouts transformers
writes: newer, pieces stripped; older, trailing spaces kept). Each of the 1,112,063 code points but U+0000 (the ops
read C strings) is checked (a) packed 500 to a text in three contexts ("x{c}y ", "{c}", " {c}{c} "), and (b) for
the Basic Multilingual Plane, alone in a text, at its end and at its start ("{c}", "ab{c}", "{c}ab"). WordPiece
also gets every ordered pair of the combining marks its normalizer keeps (canonical reordering happens across
characters). Prints the code points whose ids differ; the docs quote the result.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' tokenizer trainers (samples in, no network)

from conftest import TRAINING_TEXT, train_byte_level_bpe  # noqa: E402

from pema_export.models import resolve_model  # noqa: E402
from pema_export.string_input import plan_string_input, session, tokenizer_model  # noqa: E402

CODE_POINTS = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]


def runner(tokenizer_json: dict, sentencepiece_model: bytes | None, max_length: int):
    plan = plan_string_input(tokenizer_json, max_length=max_length, pad_id=0, sentencepiece_model=sentencepiece_model)
    graph = session(tokenizer_model(plan).SerializeToString())
    reference = Tokenizer.from_str(json.dumps(plan.tokenizer_json))
    reference.no_padding()
    reference.enable_truncation(max_length)

    def differing(texts: list[str]) -> list[int]:
        ids, mask = graph.run(None, {"text": np.array(texts, dtype=object)})
        return [row for row, encoding in enumerate(reference.encode_batch(texts)) if ids[row][mask[row] == 1].tolist() != encoding.ids]

    return differing


def sweep(label: str, tokenizer_json: dict, sentencepiece_model: bytes | None = None) -> None:
    start = time.perf_counter()
    packed = runner(tokenizer_json, sentencepiece_model, 100_000)
    found = set()
    for context in ("x{c}y ", "{c}", " {c}{c} "):
        for first in range(0, len(CODE_POINTS), 500 * 32):
            chunks = [CODE_POINTS[i : i + 500] for i in range(first, min(first + 500 * 32, len(CODE_POINTS)), 500)]
            for row in packed(["".join(context.format(c=chr(c)) for c in chunk) for chunk in chunks]):
                for c in chunks[row]:  # narrow the text down to its code points
                    if packed([context.format(c=chr(c))]):
                        found.add((context, c))
    alone = runner(tokenizer_json, sentencepiece_model, 512)
    bmp = [c for c in CODE_POINTS if c < 0x10000]
    for context in ("{c}", "ab{c}", "{c}ab"):
        for first in range(0, len(bmp), 4000):
            block = bmp[first : first + 4000]
            found |= {(context, block[row]) for row in alone([context.format(c=chr(c)) for c in block])}
    listed = ", ".join(f"U+{c:04X} in {context!r}" for context, c in sorted(found, key=lambda item: item[1])[:12])
    print(f"{label}: {len(found)} differing (code point, context) of {3 * len(CODE_POINTS) + 3 * len(bmp):,} "
          f"in {time.perf_counter() - start:.0f} s{': ' + listed if found else ''}")


def combining_pairs(label: str, tokenizer_json: dict) -> None:
    """Ordered pairs of the combining marks the normalizer keeps, after a letter: canonical reordering is the one
    place a per-character table could differ from NFD over the whole text."""
    normalizer = Tokenizer.from_str(json.dumps(tokenizer_json)).normalizer
    kept = sorted({x for c in CODE_POINTS if unicodedata.combining(chr(c)) or unicodedata.decomposition(chr(c))
                   for x in normalizer.normalize_str(chr(c)) if unicodedata.combining(x)})
    pairs = [f"a{x}{y}b" for x, y in itertools.permutations(kept, 2)]
    differing = runner(tokenizer_json, None, 512)
    bad = sum(len(differing(pairs[i : i + 2000])) for i in range(0, len(pairs), 2000))
    print(f"{label}: {bad} differing of {len(pairs):,} ordered pairs of the {len(kept)} combining marks the normalizer keeps")


def xlmr_tokenizer() -> tuple[dict, bytes]:
    import sentencepiece
    from transformers import XLMRobertaTokenizerFast

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(TRAINING_TEXT), model_writer=model, vocab_size=700,
                                             model_type="unigram", character_coverage=0.9995, num_threads=1, minloglevel=2)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "spm.model").write_bytes(model.getvalue())
        XLMRobertaTokenizerFast(vocab_file=str(Path(folder) / "spm.model")).save_pretrained(folder)
        return json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8")), model.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", default=["wordpiece", "bpe", "unigram"], choices=["wordpiece", "bpe", "unigram"])
    args = parser.parse_args()
    if "wordpiece" in args.family:
        minilm = json.loads(resolve_model(None).tokenizer_json.read_text(encoding="utf-8"))
        sweep("WordPiece (all-MiniLM-L6-v2, 30,522 tokens)", minilm)
        combining_pairs("WordPiece (all-MiniLM-L6-v2)", minilm)
    if "bpe" in args.family:
        sweep("byte-level BPE (RoBERTa-style, 700 tokens)", json.loads(train_byte_level_bpe().to_str()))
    if "unigram" in args.family:
        current, model = xlmr_tokenizer()
        sweep("Unigram (XLM-R-style .model, newer converter: pieces stripped)", current, model)
        legacy = json.loads(json.dumps(current))
        legacy["normalizer"]["normalizers"] = [current["normalizer"]["normalizers"][0], {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]
        sweep("Unigram (XLM-R-style .model, older converter: trailing spaces kept)", legacy, model)


if __name__ == "__main__":
    main()
