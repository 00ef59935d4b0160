"""``--oov tail``: exact rows for the corpus, a compressed tail for the rest of the vocabulary.

The original tokenizer ships unchanged, so an unseen word segments exactly as the full model would segment it.
The corpus's rows ship exact (fine-tuned; fp32, fp16 or int8 as the target stores its embedding). Every other
row ships as a product-quantization code of its pretrained value (rowcodes.py): ``row_bytes`` bytes a row plus one
codebook learned, seeded, from those rows themselves. A row the corpus never used is never trained (PEMA leaves
it as pretrained), so compressing it costs training nothing. The graph decodes the code with standard ops
(Gather, Cast, Add, Where; rowcodes.TailEmbedding), which onnxruntime, ORT Mobile and onnxruntime-web all run.

How many bytes a row gets follows the number format of the bundle's model files (SLICE_WIDTH): 1 per 2 embedding
values in fp32 and fp16 files (192 bytes a row for MiniLM), where the tail is the only error in the model, and 1 per
4 in int8 files (96 bytes a row), whose own rounding is of the same order. Measured with benchmarks/oov_accuracy.py
and benchmarks/oov_flips.py (fine-tuned classifiers, five labelled sets, 3 seeds) and benchmarks/encoder_oov.py
(docs/oov.md): at 96 bytes a row the fp32 classifier still lost 0.75 points on fortunes (10 test texts flipped
against it, 3 for it), at 192 bytes 0.17 (2 and 0); an encoder's int8 vectors reach a mean cosine of 0.98-0.99 to
the original model at 96. 192 bytes a row would put an int8 bundle over 0.70x optimum's own int8 export.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pema_export.errors import PemaError
from pema_export.oov import AppliedPolicy, OovPolicy, PolicyBytes, PolicySettings
from pema_export.rowcodes import CENTROIDS, TailCode, build_tail_code, install_tail
from pema_export.tokenizers import original_tokenizer_json, tokenizer_json_text
from pema_export.vocab import open_tokenizer

# Embedding values per code byte, by the model files' number format (PolicySettings.precision).
SLICE_WIDTH = {"none": 2, "fp16": 2, "int8": 4}  # MiniLM (384 wide): 192 and 96 bytes a row
PARITY_TEXTS = 64  # texts made of tail tokens that the parity check adds to the corpus sample
PARITY_TOKENS_PER_TEXT = 8
# Graph structure a tail adds to a model file besides its tables: the decoding nodes, and the embedding's own nodes
# that onnxruntime's EmbedLayerNormalization fusion no longer takes in (it needs a Gather straight from input_ids).
# Measured on all-MiniLM-L6-v2 encoder bundles (cpu fp32/int8/fp16, android fp32/int8): 4.6-9.8 kB per file; on the
# fine-tuned sample classifier (cpu int8, the default export): 15.0 kB. The prediction must not fall below a bundle.
GRAPH_BYTES = 18_000
MANIFEST_BYTES = 1_000  # the manifest's vocab.tail entry: about 700 bytes


def row_index_bytes(original_size: int) -> int:
    """Bytes per original id of the row-index table: int32 (rowcodes.TailEmbedding says why not int16)."""
    return 4


@dataclass(frozen=True)
class Tail(OovPolicy):
    row_bytes: int | None = None  # bytes (sub-vectors) per tail row; set by configure for an export
    width: int | None = None  # the embedding's row width
    reason: str = ""  # why this many bytes a row (the manifest says it)
    seed: int = 0

    name = "tail"
    manifest_key = "tail"
    ships_original_numbering = True

    def configure(self, settings: PolicySettings) -> "Tail":
        width = settings.embedding_dim
        if settings.tail_row_bytes is not None:
            row_bytes, reason = settings.tail_row_bytes, "--tail-row-bytes"
        else:
            slice_width = SLICE_WIDTH[settings.precision]
            row_bytes = max(1, width // slice_width)
            reason = f"embedding width {width} / {slice_width}, for {'fp32' if settings.precision == 'none' else settings.precision} model files"
        if width % row_bytes:
            raise PemaError(f"--tail-row-bytes {row_bytes}: the embedding's rows ({width} wide) do not split into {row_bytes} "
                            f"equal slices; choose a divisor of {width}")
        return Tail(row_bytes=row_bytes, width=width, reason=reason, seed=settings.seed)

    def bytes_predictor(self, tokenizer_json: dict) -> Callable[[object, list], PolicyBytes]:
        """The original tokenizer, and per model file the row index, the codes and the codebook (stored as the
        file's number format stores a Gather's table)."""
        original = len(tokenizer_json_text(original_tokenizer_json(tokenizer_json)).encode("utf-8"))
        codebook_item_bytes = {"none": 4, "fp16": 2, "int8": 1}

        def predict(kept, graphs) -> PolicyBytes:
            tail_rows = kept.original_size - kept.size
            per_file = [row_index_bytes(kept.original_size) * kept.original_size + tail_rows * self.row_bytes
                        + CENTROIDS * self.width * codebook_item_bytes[graph.precision] + GRAPH_BYTES for graph in graphs]
            return PolicyBytes(tokenizer=original, model=sum(per_file), metadata=MANIFEST_BYTES)

        return predict

    def heldout_ids(self, kept, unk_id: int | None) -> tuple[int | None, np.ndarray | None]:
        """Original ids; no token runs as another one (a tail token runs as its own decoded row)."""
        return unk_id, None

    def apply(self, source, kept, tokenizer_json: dict, log: Callable[[str], None]) -> "AppliedTail":
        from pema_export.pema import pretrained_rows

        read_rows, _ = pretrained_rows(source)
        code = build_tail_code(read_rows, np.flatnonzero(kept.id_map < 0), self.row_bytes, seed=self.seed)
        log(f"--oov tail: {len(code.tail_ids):,} rows outside the corpus coded in {self.row_bytes} bytes each "
            f"({code.codes.nbytes + code.quantizer.codebook.nbytes:,} bytes with the codebook, {code.seconds:.0f} s); "
            f"reconstruction cosine {code.cosine['mean']:.3f} mean")
        return AppliedTail(self, code, kept, tokenizer_json)


@dataclass
class AppliedTail(AppliedPolicy):
    code: TailCode
    kept: object  # vocab.KeptVocab
    tokenizer_json: dict
    parity: dict = field(default_factory=dict)  # the parity check on texts made of tail tokens
    # --oov-dropout keeps AppliedPolicy's UNK substitute. No unseen word becomes UNK in a tail's bundle (each keeps its
    # own coded rows), so here it is only a regulariser: the model learns to read a word from its context. Measured
    # on the slot corpus (benchmarks/token_classification.py, 3 seeds), 0.1 adds 1.6-2.7 points of entity F1, as it
    # adds 1.0-2.3 to the full vocabulary; --oov auto gives it to the tasks whose Task.tail_word_dropout says so.

    def transform_model(self, model):
        """A copy of the trained model (sharing its tensors) that takes original ids: the kept rows exact, the others
        decoded from the code. The trained model itself stays as it was, for --save-full."""
        shared = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
        return install_tail(copy.deepcopy(model, memo=shared), self.code, self.kept.kept_ids, self.kept.original_size)

    def parity_tokenizer(self, pruned, shipped_path):
        return open_tokenizer(shipped_path)

    def parity_texts(self, seed: int) -> list[str]:
        """Texts made of seeded random tail tokens, each encoding to at least one tail id, so the parity check runs
        the decoding path the corpus texts never reach."""
        tokenizer = open_tokenizer(self.tokenizer_json)
        specials = {int(t["id"]) for t in self.tokenizer_json.get("added_tokens", [])}
        vocabulary = np.array(sorted(set(tokenizer.get_vocab().values()) - specials), dtype=np.int64)
        candidates = np.intersect1d(vocabulary, self.code.tail_ids)
        if not len(candidates):
            return []
        rng = np.random.default_rng(seed)
        in_tail = np.zeros(self.kept.original_size, dtype=bool)
        in_tail[self.code.tail_ids] = True
        texts = []
        for _ in range(PARITY_TEXTS):
            text = tokenizer.decode(rng.choice(candidates, size=PARITY_TOKENS_PER_TEXT).tolist())
            if in_tail[[i for i in tokenizer.encode(text).ids if i < len(in_tail)]].any():
                texts.append(text)
        return texts

    def record_parity(self, texts_checked: int, max_abs_diff: float) -> None:
        self.parity = {"texts_with_tail_tokens": texts_checked, "max_abs_diff": max_abs_diff}

    def manifest_entry(self) -> dict:
        code, quantizer = self.code, self.code.quantizer
        original_size = self.kept.original_size
        return {
            "code": "product quantization",
            "rows": len(code.tail_ids),
            "row_bytes": quantizer.sub_vectors,
            "row_bytes_reason": self.policy.reason,
            "slice_width": quantizer.width,
            "centroids": CENTROIDS,
            "seed": self.policy.seed,
            "bytes": {"codes": int(code.codes.nbytes), "codebook_fp32": int(quantizer.codebook.nbytes),
                      "row_index": row_index_bytes(original_size) * original_size},
            "reconstruction_cosine": {key: round(value, 6) for key, value in code.cosine.items()},
            "parity": self.parity,
        }


POLICY = Tail()
