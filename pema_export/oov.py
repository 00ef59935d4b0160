"""Text the corpus never had: a word-frequency prior, the nearest-kept remap, and held-out figures.

- ``PriorWords``: the tokens of a language's N most frequent words (``wordfreq``'s offline lists), tokenized
  with the model's own tokenizer, each with its share of general text; ``--prior-words N``.
- ``nearest_kept_table``: every original id -> the kept id whose pretrained embedding is closest (``--oov remap``);
  ``prepend_id_remap`` puts that table in the graph in front of everything that reads ``input_ids``, so the
  bundle ships the original tokenizer and one int32 per original id.
- ``heldout_report``: UNK rate and accuracy of the shipped model, with the shipped tokenizer, on ``--eval``.
"""

from __future__ import annotations

import copy
import functools
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

import numpy as np

from pema_export.errors import CorpusError, ModelError, TokenizerError, VerificationError
from pema_export.manifest import HeldOutRecord

# Languages whose share of the corpus texts is below this are not given a prior (one stray French greeting in an
# English corpus should not buy thousands of French rows).
MIN_LANGUAGE_SHARE = 0.2
# Words per language compared with the corpus to detect its language(s): enough to cover everyday text.
DETECT_WORDS = 5000
ID_MAP_NAME = "pema_id_map"
_WORDS = re.compile(r"[^\W\d_]+")


@functools.lru_cache(maxsize=None)
def _wordfreq():
    try:
        import wordfreq
    except ImportError:  # a dependency; only a broken install lacks it
        raise CorpusError("--prior-words needs the wordfreq package (pip install wordfreq)") from None
    return wordfreq


def available_languages() -> list[str]:
    return sorted(_wordfreq().available_languages(wordlist="best"))


@functools.lru_cache(maxsize=None)
def _top_words(language: str, n_words: int) -> tuple[str, ...]:
    return tuple(_wordfreq().top_n_list(language, n_words, wordlist="best"))


def detect_languages(texts: Iterable[str]) -> dict[str, float]:
    """Languages of the corpus -> share of its texts: each text votes for the language whose common words cover
    most of its words (ties: the language that covers more of the whole corpus); languages with at least
    MIN_LANGUAGE_SHARE of the votes are returned, most voted first."""
    words_by_text = [_WORDS.findall(text.lower()) for text in texts]
    words_by_text = [words for words in words_by_text if words]
    if not words_by_text:
        raise CorpusError("cannot detect the corpus language: it has no words; pass --prior-lang")
    common = {language: frozenset(_top_words(language, DETECT_WORDS)) for language in available_languages()}
    corpus_cover = {language: sum(w in vocab for words in words_by_text for w in words) for language, vocab in common.items()}
    votes: Counter[str] = Counter()
    for words in words_by_text:
        cover = {language: sum(w in vocab for w in words) for language, vocab in common.items()}
        best = max(cover.values())
        if best:
            votes[max((lang for lang, c in cover.items() if c == best), key=lambda lang: (corpus_cover[lang], lang))] += 1
    total = sum(votes.values())
    shares = {lang: n / total for lang, n in sorted(votes.items(), key=lambda item: (-item[1], item[0])) if total and n / total >= MIN_LANGUAGE_SHARE}
    if not shares:
        raise CorpusError("cannot detect the corpus language from wordfreq's word lists; pass --prior-lang")
    return shares


def check_languages(languages: Iterable[str]) -> list[str]:
    known = set(available_languages())
    languages = list(languages)
    unknown = [lang for lang in languages if lang not in known]
    if unknown:
        raise CorpusError(f"--prior-lang {','.join(unknown)}: no word list (available: {', '.join(sorted(known))})")
    return languages


@dataclass(frozen=True)
class PriorWords:
    """The tokens of the N most frequent words of some languages, and each token's share of their text."""

    languages: tuple[str, ...]
    words: int  # per language
    token_share: np.ndarray  # per original id; sums to 1 over the tokens of the listed words

    @property
    def ids(self) -> set[int]:
        return {int(i) for i in np.flatnonzero(self.token_share)}

    def as_manifest(self, detected: dict[str, float] | None) -> dict:
        entry = {"languages": list(self.languages), "words_per_language": self.words, "tokens": len(self.ids)}
        entry["detected"] = {lang: round(share, 4) for lang, share in detected.items()} if detected else None
        return entry


def prior_words(tokenizer, languages: list[str], n_words: int, vocab_size: int) -> PriorWords:
    """Tokenize each listed word as it appears in running text (alone and after a space, which byte-level BPE and
    SentencePiece spell differently) and credit its frequency to each of its tokens."""
    if n_words < 1:
        raise CorpusError("--prior-words must be at least 1")
    share = np.zeros(vocab_size, dtype=np.float64)
    for language in languages:
        words = list(_top_words(language, n_words))
        frequencies = np.array([_wordfreq().word_frequency(w, language, wordlist="best") for w in words])
        for form in (words, [" " + w for w in words]):
            for frequency, encoding in zip(frequencies, tokenizer.encode_batch(form, add_special_tokens=False)):
                ids = np.unique(np.asarray(encoding.ids, dtype=np.int64))
                share[ids[ids < vocab_size]] += frequency
    if share.sum() > 0:
        share /= share.sum()
    return PriorWords(languages=tuple(languages), words=n_words, token_share=share)


# --- Nearest-kept remap


def pretrained_embedding(source) -> np.ndarray:
    """The model's pretrained input-embedding matrix (all rows), read from safetensors without building the model."""
    from pema_export.pema import find_safetensors

    config = source.read_config()
    rows = config.get("vocab_size")
    checkpoint = find_safetensors(source.path)
    if checkpoint is not None:
        candidates = sorted(
            name for name, shape in checkpoint.shapes.items()
            if len(shape) == 2 and shape[0] == rows and ("word_embeddings" in name or "embed_tokens" in name or "shared" in name)
        )
        if candidates:
            return checkpoint.read(candidates[0]).float().numpy()
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source.path)
    embedding = model.get_input_embeddings()
    if embedding is None or embedding.weight.shape[0] != rows:
        raise ModelError(f"{source.name}: cannot find the input embedding for --oov remap")
    return embedding.weight.detach().float().numpy()


@dataclass(frozen=True)
class RemapTables:
    """``id_map[old]``: the new id an original id runs as (itself when kept, else the nearest kept token);
    ``neighbour[new]``: the nearest *other* kept token of a kept one (what --oov-dropout substitutes)."""

    id_map: np.ndarray  # int64, one per original id
    neighbour: np.ndarray  # int64, one per kept id
    remapped_ids: int  # original ids that run as another token


def nearest_kept_table(embedding: np.ndarray, kept, protected_ids: Iterable[int], chunk: int = 4096) -> RemapTables:
    """Cosine-nearest kept token for every original id. Special tokens are never a target (an unseen word must not
    read as [SEP] or padding); ties go to the lower id, so the table is deterministic."""
    embedding = np.asarray(embedding, dtype=np.float32)
    unit = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    protected = set(int(i) for i in protected_ids)
    candidates = np.array([int(i) for i in kept.kept_ids if int(i) not in protected and int(i) < len(unit)], dtype=np.int64)
    if len(candidates) < 2:
        raise ModelError("--oov remap needs at least two kept non-special tokens")
    new_of = kept.id_map
    id_map = new_of.copy()
    neighbour = np.arange(kept.size, dtype=np.int64)
    target = unit[candidates].T
    for start in range(0, len(unit), chunk):
        scores = unit[start : start + chunk] @ target
        rows = np.arange(start, min(start + chunk, len(unit)))
        # the second-best kept token, for kept rows: the row itself always scores best
        is_self = candidates[None, :] == rows[:, None]
        best = scores.argmax(axis=1)
        scores[is_self] = -np.inf
        other = scores.argmax(axis=1)
        dropped = new_of[rows] < 0
        id_map[rows[dropped]] = new_of[candidates[best[dropped]]]
        kept_rows = ~dropped
        neighbour[new_of[rows[kept_rows]]] = new_of[candidates[other[kept_rows]]]
    for special in protected:  # specials stand for themselves in training too
        if 0 <= special < len(new_of) and new_of[special] >= 0:
            neighbour[new_of[special]] = new_of[special]
    return RemapTables(id_map=id_map, neighbour=neighbour, remapped_ids=int(np.count_nonzero(new_of < 0)))


def prepend_id_remap(onnx_path: Path, id_map: np.ndarray) -> None:
    """Rewrite the graph so it takes original ids: input_ids -> Gather(id_map) -> Cast(int64) -> every old consumer.

    The table is int32 (4 bytes per original id); the Cast keeps every consumer's input type as exported."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    if "input_ids" not in {i.name for i in graph.input}:
        raise ModelError("the exported graph has no input_ids input to remap")
    remapped = "input_ids_pruned"
    for node in graph.node:
        node.input[:] = [remapped if name == "input_ids" else name for name in node.input]
    graph.initializer.append(numpy_helper.from_array(id_map.astype(np.int32), ID_MAP_NAME))
    nodes = [
        helper.make_node("Gather", [ID_MAP_NAME, "input_ids"], ["input_ids_pruned_int32"], name="pema_id_remap", axis=0),
        helper.make_node("Cast", ["input_ids_pruned_int32"], [remapped], name="pema_id_remap_cast", to=TensorProto.INT64),
    ]
    for index, node in enumerate(nodes):
        graph.node.insert(index, node)
    onnx.save(model, str(onnx_path))


# --- Held-out figures of the shipped bundle


@dataclass(frozen=True)
class HeldOutReport:
    texts: int
    pieces: int
    unk_rate: float | None  # share of word pieces the model receives as UNK (None: the tokenizer has no UNK)
    remapped_rate: float  # share of word pieces that run as a different (nearest kept) token
    accuracy: float | None
    # an encoder (no labels): its sentence vectors against the original, full-vocabulary model's on the same texts
    cosine_to_full: dict | None = None  # {"mean", "min", "p10"}
    neighbour_agreement: float | None = None  # share of texts whose nearest other held-out text is the full model's

    def as_manifest(self, file_name: str, model_name: str) -> HeldOutRecord:
        return HeldOutRecord(
            file=file_name,
            model=model_name,
            texts=self.texts,
            unk_rate=None if self.unk_rate is None else round(self.unk_rate, 6),
            remapped_rate=round(self.remapped_rate, 6),
            accuracy=None if self.accuracy is None else round(self.accuracy, 6),
            cosine_to_full=None if self.cosine_to_full is None else {key: round(value, 6) for key, value in self.cosine_to_full.items()},
            nearest_neighbour_agreement=None if self.cosine_to_full is None else round(self.neighbour_agreement, 6),
        )


def heldout_report(model_path: Path, tokenizer, texts: list[str], labels: list[int] | None, *, unk_id: int | None,
                   dropped_ids: np.ndarray | None = None, full_vectors: np.ndarray | None = None) -> HeldOutReport:
    """Run the shipped model one text at a time (as an app does) on held-out texts with the shipped tokenizer.

    ``unk_id`` is in the shipped tokenizer's numbering; ``dropped_ids`` (remap bundles, whose tokenizer is the
    original): a boolean mask of the original ids that run as their nearest kept token. ``full_vectors``
    (encoders): the original model's sentence vectors for ``texts`` (``full_vocabulary_vectors``)."""
    import onnxruntime as ort

    from pema_export.pooling import SENTENCE_OUTPUT

    encodings = tokenizer.encode_batch(texts)
    pieces = np.asarray([i for enc in encodings for i, special in zip(enc.ids, enc.special_tokens_mask) if not special], dtype=np.int64)
    unk = None if unk_id is None else float(np.mean(pieces == unk_id)) if len(pieces) else 0.0
    remapped = float(np.mean(dropped_ids[pieces])) if dropped_ids is not None and len(pieces) else 0.0
    if labels is None and full_vectors is None:
        return HeldOutReport(texts=len(texts), pieces=len(pieces), unk_rate=unk, remapped_rate=remapped, accuracy=None)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    input_names = {i.name for i in session.get_inputs()}
    output_names = [o.name for o in session.get_outputs()]
    answers = []
    for encoding in encodings:
        ids = np.asarray([encoding.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        if labels is not None:
            answers.append(int(session.run(["logits"], feeds)[0][0].argmax()))
        elif SENTENCE_OUTPUT in output_names:
            answers.append(session.run([SENTENCE_OUTPUT], feeds)[0][0])
        else:  # an encoder without sentence pooling: the mean of its token states stands for the text
            answers.append(session.run(["last_hidden_state"], feeds)[0][0].mean(axis=0))
    if labels is not None:
        accuracy = sum(int(a == y) for a, y in zip(answers, labels)) / max(len(texts), 1)
        return HeldOutReport(texts=len(texts), pieces=len(pieces), unk_rate=unk, remapped_rate=remapped, accuracy=accuracy)
    cosines, agreement = compare_vectors(np.asarray(answers, dtype=np.float64), np.asarray(full_vectors, dtype=np.float64))
    return HeldOutReport(
        texts=len(texts), pieces=len(pieces), unk_rate=unk, remapped_rate=remapped, accuracy=None,
        cosine_to_full={"mean": float(cosines.mean()), "min": float(cosines.min()), "p10": float(np.percentile(cosines, 10))},
        neighbour_agreement=agreement,
    )


def compare_vectors(got: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-text cosine of ``got`` to ``want``, and the share of texts whose nearest other text (by cosine) is the
    same under both: what a search feature over these texts would return first."""
    unit_got = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    unit_want = want / np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-12)
    cosines = (unit_got * unit_want).sum(axis=1)
    if len(got) < 2:
        return cosines, 1.0
    similar_got, similar_want = unit_got @ unit_got.T, unit_want @ unit_want.T
    np.fill_diagonal(similar_got, -np.inf)
    np.fill_diagonal(similar_want, -np.inf)
    return cosines, float(np.mean(similar_got.argmax(axis=1) == similar_want.argmax(axis=1)))


def full_vocabulary_vectors(source, texts: list[str], max_length: int) -> np.ndarray:
    """The original model's sentence vectors (every row, pretrained, fp32, its own tokenizer): the ceiling a pruned
    encoder is held to on text the corpus never had. Pooled as the bundle pools; mean of token states otherwise."""
    import torch
    from transformers import AutoModel

    from pema_export.pooling import pool_torch
    from pema_export.vocab import open_tokenizer

    model = AutoModel.from_pretrained(source.path)
    model.eval()
    tokenizer = open_tokenizer(source.tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    vectors = []
    with torch.no_grad():
        for encoding in tokenizer.encode_batch(texts):
            ids = torch.tensor([encoding.ids])
            mask = torch.ones_like(ids)
            states = model(input_ids=ids, attention_mask=mask).last_hidden_state
            if source.pooling is not None:
                vectors.append(pool_torch(source.pooling, states, mask)[0].numpy())
            else:
                vectors.append(states[0].mean(dim=0).numpy())
    return np.asarray(vectors)


def shipped_config(config, kept=None):
    """config.json as shipped: a remap bundle's graph takes original ids, so vocab_size and the special-token ids
    are the original ones (the model's own config, used for training and export, keeps the pruned numbering)."""
    from pema_export.vocab import CONFIG_ID_FIELDS

    if kept is None:
        return config
    shipped = copy.deepcopy(config)
    shipped.vocab_size = kept.original_size
    for name in CONFIG_ID_FIELDS:
        value = getattr(shipped, name, None)
        if isinstance(value, int) and 0 <= value < kept.size:
            setattr(shipped, name, int(kept.kept_ids[value]))
    return shipped


@dataclass
class IdRemap:
    """``--oov remap`` as a stage of ``stages.ship``: the table goes into every shipped model, checked exactly.

    ``apply`` prepends the table to a model file in place and checks the result against the model before the
    table: on the corpus sample's original ids it must answer exactly (0.0) as before on the pruned ids, since the
    table is a lookup. It returns the reference with original ids as its feeds, so the stages after it (ORT
    conversion) are checked on the ids the app will send."""

    tables: RemapTables
    kept: object  # vocab.KeptVocab
    models: list[str] = field(default_factory=list)
    texts_checked: int = 0

    def apply(self, model: Path, name: str, reference, work: Path):
        import shutil

        import onnxruntime as ort

        before = work / f"before-remap-{len(self.models)}.onnx"
        shutil.copyfile(model, before)
        prepend_id_remap(model, self.tables.id_map)
        original = self.original_ids(reference)
        sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (before, model)]
        inputs = [{i.name for i in session.get_inputs()} for session in sessions]
        for pruned_feed, original_feed, text in zip(reference.feeds, original.feeds, reference.texts):
            want = sessions[0].run(None, {k: v for k, v in pruned_feed.items() if k in inputs[0]})
            got = sessions[1].run(None, {k: v for k, v in original_feed.items() if k in inputs[1]})
            diff = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
            if diff > 0.0:
                raise VerificationError(f"--oov remap: {name} with the id table differs by {diff:.3g} on corpus text {text[:80]!r}")
        self.models.append(name)
        self.texts_checked = len(reference.texts)
        return original

    def original_ids(self, reference):
        """The same reference, its feeds in the original tokenizer's numbering (what a remap bundle's app sends)."""
        feeds = [{**feed, "input_ids": self.kept.kept_ids[feed["input_ids"]]} for feed in reference.feeds]
        return replace(reference, feeds=feeds)

    def as_manifest(self) -> dict:
        return {"table": ID_MAP_NAME, "table_bytes": 4 * len(self.tables.id_map), "remapped_ids": self.tables.remapped_ids,
                "models": sorted(self.models), "texts_checked": self.texts_checked}


@dataclass(frozen=True)
class OovDropout:
    """``--oov-dropout``: during training, each corpus word is replaced with probability ``rate`` by what an unseen
    word becomes in the bundle, so the model learns to read around missing words."""

    rate: float
    substitute_name: str  # "nearest kept token" or "UNK"
    neighbour: np.ndarray | None = None
    unk_new_id: int | None = None

    def substitute(self, word_ids: list[int]) -> list[int]:
        if self.neighbour is not None:
            return [int(self.neighbour[i]) for i in word_ids]
        return [self.unk_new_id]


def oov_dropout(rate: float, kept, tables: RemapTables | None, unk_id: int | None) -> OovDropout | None:
    """The substitute follows the --oov policy: remap -> each piece's nearest other kept token; otherwise UNK
    (what a word with no kept segmentation becomes; under fallback most unseen words re-segment instead)."""
    if not rate:
        return None
    if not 0 < rate < 1:
        raise CorpusError(f"--oov-dropout {rate} must be between 0 and 1")
    if tables is not None:
        return OovDropout(rate, "nearest kept token", neighbour=tables.neighbour)
    if unk_id is None:
        raise TokenizerError("--oov-dropout needs an UNK token to substitute (this tokenizer has none); use --oov remap")
    return OovDropout(rate, "UNK", unk_new_id=kept.new_id(unk_id))
