"""Before any work: tokenize the corpus only and predict what the export will keep and write.

``pema-export scan`` runs this in seconds, so a team sees the saving before spending a fine-tuning run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pema_export.corpus import CorpusSummary, batched, check_corpus_paths, iter_texts, read_corpus
from pema_export.budget import BudgetError
from pema_export.errors import CorpusError, ModelError, TokenizerError
from pema_export.models import ModelSource, resolve_model
from pema_export.oov import DEFAULT as DEFAULT_OOV
from pema_export.oov import POLICIES, OovPolicy, PolicyBytes, PolicySettings, auto, get_policy
from pema_export.oov.prior import PriorWords, check_languages, detect_languages
from pema_export.oov.prior import prior_words as oov_prior_words
from pema_export.profiles import Target, load_target
from pema_export.rowcodes import CENTROIDS
from pema_export.stages import graph_bytes_per_layer, predicted_model_files
from pema_export.stages import string_input as string_input_stage
from pema_export.stages.formats import format_of
from pema_export.stages.quantize import weight_bytes
from pema_export.tasks import Task, resolve_task, transformers_class
from pema_export.tokenizers import check_supported, original_tokenizer_json, prune_tokenizer, token_closure, tokenizer_json_text
from pema_export.vocab import (
    KeptVocab,
    TokenCounts,
    choose_kept_ids,
    count_tokens,
    open_tokenizer,
    read_keep_tokens,
    special_token_ids,
    unk_token_id,
)

COVERAGE_POINTS = 24  # points on the coverage curve written to the manifest


@dataclass
class VocabScan:
    """What one streamed pass over the corpus found, and the vocabulary chosen from it."""

    counts: TokenCounts
    kept: KeptVocab
    keep_ids: set[int]
    summary: CorpusSummary
    task: Task  # what the export makes: tasks.resolve_task on --task, the corpus's labels and the checkpoint
    prior: PriorWords | None = None
    detected_languages: dict[str, float] | None = None  # when --prior-lang was not given
    max_vocab: int | None = None  # the cap applied: --max-vocab, or the one --max-bytes chose
    predicted_bytes: int | None = None  # with --max-bytes: the predicted bundle bytes of the chosen vocabulary
    oov: str = DEFAULT_OOV  # the policy applied: --oov as given, or what "auto" resolved to
    oov_choice: dict | None = None  # under --oov auto: what it chose, why, and the predicted bytes it weighed
    oov_dropout: float = 0.0  # the --oov-dropout that goes with the policy when --oov-dropout is not given
    settings: PolicySettings | None = None  # what the policy is configured with for this export

    @property
    def policy(self) -> OovPolicy:
        return get_policy(self.oov, self.settings)

    def coverage(self, points: int = COVERAGE_POINTS) -> list[list[float]]:
        """[vocabulary size, share of corpus tokens covered] keeping the most frequent tokens first."""
        ordered = np.sort(self.counts.counts[self.counts.counts > 0])[::-1]
        cumulative = np.cumsum(ordered) / ordered.sum()
        sizes = np.unique(np.geomspace(1, len(ordered), num=min(points, len(ordered))).round().astype(int))
        return [[int(size), round(float(cumulative[size - 1]), 6)] for size in sizes]


@dataclass(frozen=True)
class ScanOptions:
    """``pema-export scan``: the model, corpus and vocabulary options it shares with the export."""

    corpus: list[str]
    model: str | None = None
    target: str = "cpu"
    quantize: str | None = None
    keep_tokens: str | None = None
    min_count: int = 1
    oov: str = DEFAULT_OOV
    max_vocab: int | None = None
    max_bytes: int | None = None
    prior_words: int | None = None
    prior_lang: list[str] | None = None
    heldout: str | None = None  # texts the corpus does not contain: their UNK rate is reported
    tail_row_bytes: int | None = None
    tokenizer: str | None = None  # --tokenizer: "in-graph" counts the tokenizer in the model files


def open_source(model: str | None) -> tuple[ModelSource, dict]:
    """The model folder ``--model`` names and its tokenizer.json, refused when its family cannot be pruned."""
    source = resolve_model(model)
    tokenizer_json = json.loads(source.tokenizer_json.read_text(encoding="utf-8"))
    check_supported(tokenizer_json)
    return source, tokenizer_json


def scan_report(options: ScanOptions) -> dict:
    """Tokenize the corpus only (no training): the kept vocabulary and the predicted bundle bytes for the target,
    and the held-out UNK rate; what ``pema-export scan --json`` prints."""
    target = load_target(options.target, quantize=options.quantize, tokenizer=options.tokenizer)
    corpus_paths = check_corpus_paths(options.corpus)
    heldout_paths = check_corpus_paths([options.heldout]) if options.heldout else []
    source, tokenizer_json = open_source(options.model)
    scan = scan_vocabulary(source, tokenizer_json, corpus_paths, keep_tokens=options.keep_tokens, min_count=options.min_count,
                           oov=options.oov, max_vocab=options.max_vocab, prior_words=options.prior_words,
                           prior_lang=options.prior_lang, max_bytes=options.max_bytes, target=target,
                           tail_row_bytes=options.tail_row_bytes)
    prediction = bundle_predictor(source, tokenizer_json, scan.task, head_classes(scan.task, scan.summary), target, scan.policy)(scan.kept)
    report = {
        "model": source.name,
        "target": target.name,
        "texts": scan.counts.texts,
        "tokens": scan.counts.tokens,
        "vocab": {"original": scan.kept.original_size, "kept": scan.kept.size, "corpus_used": scan.counts.used_ids,
                  "oov": scan.oov, "oov_choice": scan.oov_choice},
        "predicted_bytes": {"model": prediction.model_bytes, "tokenizer": prediction.tokenizer_bytes,
                            "total": prediction.total_bytes},
    }
    if heldout_paths:
        # a bundle in the original numbering ships the original tokenizer: its unseen pieces never become UNK
        shipped = tokenizer_json if scan.policy.ships_original_numbering else prune_tokenizer(tokenizer_json, scan.kept.kept_ids)
        report["heldout_unk_rate"] = unk_rate(shipped, heldout_paths)
        report["heldout_unk_rate_full_vocab"] = unk_rate(tokenizer_json, heldout_paths)
    return report


def _auto_prior(words: int, trains: bool, language_prior, kept_with: Callable[[PriorWords], KeptVocab], record: dict):
    """``--oov auto``'s prior words for a tail (auto.prior_words): (prior, detected languages, the record with what
    was added), or no prior, and why, where the corpus's language is not found or the tail would keep too few rows."""
    try:
        prior, detected = language_prior(words)
    except CorpusError as exc:
        return None, None, {**record, "prior_words": None, "prior_skipped": str(exc)}
    tail_rows = int(np.count_nonzero(kept_with(prior).id_map < 0))
    if tail_rows < CENTROIDS:
        return None, None, {**record, "prior_words": None,
                            "prior_skipped": f"with them only {tail_rows} rows would remain for the tail ({CENTROIDS} needed)"}
    return prior, detected, {**record, "prior_words": words, "reason": auto.tail_reason(trains, tail_rows, words, prior.languages)}


def scan_vocabulary(
    source: ModelSource,
    tokenizer_json: dict,
    corpus_paths: list[Path],
    *,
    keep_tokens: str | None = None,
    min_count: int = 1,
    oov: str = DEFAULT_OOV,
    max_vocab: int | None = None,
    sample_size: int = 1000,
    seed: int = 0,
    prior_words: int | None = None,
    prior_lang: list[str] | None = None,
    max_bytes: int | None = None,
    target: Target | None = None,
    task: str | None = None,
    tail_row_bytes: int | None = None,
    oov_dropout: float | None = None,
) -> VocabScan:
    """Stream the corpus once: count token ids, note labels, keep a seeded sample; then choose the kept ids.

    ``prior_words``: also keep the tokens of that many most frequent words of ``prior_lang`` (detected from the
    corpus sample when None). ``max_bytes``: the largest vocabulary, ranked by expected benefit, whose predicted
    ``target`` bundle fits (with ``max_vocab`` too, the smaller cap wins). ``task``: --task, when given.
    ``tail_row_bytes``: --tail-row-bytes, for the policies that read it. ``oov_dropout``: --oov-dropout, when given
    (under --oov auto it replaces auto's own rate, and the choice's record says so)."""
    if prior_lang:
        check_languages(prior_lang)  # before any work: --oov auto would otherwise only skip its prior words
    tokenizer = open_tokenizer(tokenizer_json)
    config = source.read_config()
    summary = CorpusSummary(sample_size=sample_size, seed=seed)
    counts = count_tokens(tokenizer, summary.observe(read_corpus(corpus_paths)))
    resolved = resolve_task(task, summary.label_kind, config.get("architectures"))
    settings = PolicySettings(embedding_width(config), resolved.trains_on(summary.label_kind), tail_row_bytes, seed,
                              precision=target.quantize if target is not None else "none")
    keep_ids = read_keep_tokens(keep_tokens, tokenizer) if keep_tokens else set()

    def language_prior(words: int) -> tuple[PriorWords, dict[str, float] | None]:
        if prior_lang:
            return oov_prior_words(tokenizer, check_languages(prior_lang), words, len(counts.counts)), None
        languages = detect_languages(summary.sample_texts)
        return oov_prior_words(tokenizer, list(languages), words, len(counts.counts)), languages

    prior, detected = language_prior(prior_words) if prior_words else (None, None)

    def choose(cap: int | None, policy: str | None = None, words: PriorWords | None = None) -> KeptVocab:
        words = words or prior
        return choose_kept_ids(
            counts,
            special_token_ids(tokenizer_json, config),
            unk_id=unk_token_id(tokenizer_json),
            keep_ids=keep_ids,
            min_count=min_count,
            original_size=config.get("vocab_size"),
            policy_ids=get_policy(policy or oov).policy_ids(tokenizer_json),
            closure=token_closure(tokenizer_json),
            max_vocab=cap,
            prior_share=None if words is None else words.token_share,
        )

    oov_choice, dropout = None, 0.0
    if oov == auto.NAME:
        if target is None:
            raise ValueError("--oov auto needs the target whose bundle it weighs")
        # the candidates are weighed as the model without the corpus's labels: both would carry the same head
        unlabelled = resolve_task(task, None, config.get("architectures"))
        oov, dropout, oov_choice = auto.choose(
            resolved.trains_on(summary.label_kind),
            unk_token_id(tokenizer_json) is not None,
            {name: POLICIES[name].refusal(resolved) for name in (auto.PREFERRED, *auto.CANDIDATES)},
            lambda name: bundle_bytes_predictor(source, tokenizer_json, unlabelled, None, target,
                                                get_policy(name, settings))(choose(max_vocab, name)),
            tail_rows=int(np.count_nonzero(choose(max_vocab, auto.PREFERRED).id_map < 0)),
            tail_dropout=resolved.tail_word_dropout, dropout_given=oov_dropout,
        )
        auto_words = None if prior_words else auto.prior_words(oov, settings.trains)
        if auto_words:
            prior, detected, oov_choice = _auto_prior(auto_words, settings.trains, language_prior,
                                                      lambda candidate: choose(max_vocab, words=candidate), oov_choice)

    if prior_lang and prior is None:
        raise CorpusError(f"--prior-lang {','.join(prior_lang)}: this export keeps no prior words (--oov auto keeps them only "
                          "for an encoder with a compressed tail); pass --prior-words N to keep them")
    predicted = None
    if max_bytes is not None:
        if target is None:
            raise ValueError("max_bytes needs the target whose bundle it bounds")
        max_vocab, predicted = fit_max_bytes(
            max_bytes, choose,
            bundle_bytes_predictor(source, tokenizer_json, resolved, head_classes(resolved, summary), target, get_policy(oov, settings)),
            max_vocab,
        )
    kept = choose(max_vocab)
    return VocabScan(counts=counts, kept=kept, keep_ids=keep_ids, summary=summary, task=resolved, prior=prior,
                     detected_languages=detected, max_vocab=max_vocab, predicted_bytes=predicted, oov=oov, oov_choice=oov_choice,
                     oov_dropout=dropout, settings=settings)


def embedding_width(config: dict) -> int:
    """The width of a model's input-embedding rows, from its config.json (ALBERT and ELECTRA factor the embedding
    below the hidden size; DistilBERT calls the width ``dim``)."""
    width = config.get("embedding_size") or config.get("hidden_size") or config.get("dim")
    if not isinstance(width, int):
        raise ModelError("config.json gives no embedding width (embedding_size, hidden_size or dim)")
    return width


def head_classes(task: Task, summary: CorpusSummary) -> int | None:
    """The classes the task's head predicts from the corpus's labels (a token classifier: O, B- and I- per entity
    type); None for an unlabelled corpus."""
    return len(task.label_names(summary.labels)) if summary.label_kind else None


def bundle_predictor(source: ModelSource, tokenizer_json: dict, task: Task, num_labels: int | None, target: Target,
                     policy: OovPolicy):
    """kept -> predicted sizes of the bundle ``policy`` makes (what it ships instead of the pruned tokenizer counts
    as its tokenizer bytes)."""
    policy_bytes = policy.bytes_predictor(tokenizer_json)
    return lambda kept: predict_sizes(source, tokenizer_json, kept, task, num_labels, target, policy_bytes,
                                      original_numbering=policy.ships_original_numbering)


def bundle_bytes_predictor(source: ModelSource, tokenizer_json: dict, task: Task, num_labels: int | None, target: Target,
                           policy: OovPolicy):
    """kept -> predicted bundle bytes (``bundle_predictor``'s total)."""
    predict = bundle_predictor(source, tokenizer_json, task, num_labels, target, policy)
    return lambda kept: predict(kept).total_bytes


def fit_max_bytes(max_bytes: int, choose, predict, max_vocab: int | None = None) -> tuple[int | None, int]:
    """The largest cap (<= ``max_vocab``) whose vocabulary's predicted bundle fits ``max_bytes``, by bisection
    (bytes grow with every kept row); (None, bytes) when everything the options would keep fits."""
    everything = choose(max_vocab)
    total = predict(everything)
    if total <= max_bytes:
        return max_vocab, total
    low = _must_keep_size(choose, everything.size)
    smallest = predict(choose(low))
    if smallest > max_bytes:
        raise BudgetError(
            f"--max-bytes {max_bytes:,} is below the smallest bundle this model can make: {smallest:,} bytes with the "
            f"{low:,} tokens that must be kept (special tokens, --keep-tokens, the --oov policy's pieces)"
        )
    high = everything.size  # does not fit; low fits
    while high - low > 1:
        middle = (low + high) // 2
        if predict(choose(middle)) <= max_bytes:
            low = middle
        else:
            high = middle
    return low, predict(choose(low))


def _must_keep_size(choose, upper: int) -> int:
    """The smallest cap choose_kept_ids accepts: the count of tokens that must be kept (it refuses anything lower)."""
    low, high = 0, upper  # choose(high) works
    while high - low > 1:
        middle = (low + high) // 2
        try:
            choose(middle)
            high = middle
        except TokenizerError:
            low = middle
    return high


def unk_rate(tokenizer_json: dict, texts_paths: list[Path]) -> float | None:
    """Share of the non-special tokens of some texts that come out as UNK (None: the family has no UNK)."""
    unk_id = unk_token_id(tokenizer_json)
    if unk_id is None:
        return None
    tokenizer = open_tokenizer(tokenizer_json)
    special = {int(t["id"]) for t in tokenizer_json.get("added_tokens", []) if t.get("special")} - {unk_id}
    unknown = total = 0
    for batch in batched(iter_texts(texts_paths), 1024):
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            ids = [i for i in encoding.ids if i not in special]
            total += len(ids)
            unknown += sum(1 for i in ids if i == unk_id)
    return unknown / total if total else 0.0


@dataclass(frozen=True)
class SizePrediction:
    model_bytes: int
    tokenizer_bytes: int
    other_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.tokenizer_bytes + self.other_bytes


def predict_sizes(source: ModelSource, tokenizer_json: dict, kept: KeptVocab, task: Task, num_labels: int | None,
                  target: Target, policy_bytes: Callable[[KeptVocab, list], PolicyBytes] | None = None, *,
                  original_numbering: bool = False) -> SizePrediction:
    """Predict the bundle's bytes from the architecture's parameter shapes (the task's ``size_class`` over
    ``num_labels`` when the corpus gives them, built on the meta device: no weights are read) and the model files
    the target's stages ship (their number formats and graph kinds); the tokenizer is pruned for real, so its bytes
    are exact. ``policy_bytes`` (an OOV policy's bytes_predictor): what the policy ships instead of the pruned
    tokenizer or adds to the model files. ``original_numbering``: the bundle ships the original tokenizer.json (an
    in-graph tokenizer, --tokenizer in-graph, then holds the original vocabulary)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source.path)
    config.vocab_size = kept.size
    if num_labels is not None:
        config.num_labels = num_labels
    with torch.device("meta"):
        model = transformers_class(task.size_class).from_config(config)
    # an encoder is exported for its token states (and sentence pooling): the pooler's dense layer is not in the graph
    skip = set() if task.exports_pooler else {id(p) for name, p in model.named_parameters() if name.startswith("pooler.")}
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", 1)
    graphs = predicted_model_files(target, config.model_type)
    model_bytes = sum(weight_bytes(model, graph.precision, skip) + graph_bytes_per_layer(graph) * layers for graph in graphs)
    added = policy_bytes(kept, graphs) if policy_bytes is not None else PolicyBytes(tokenizer=None)
    tokenizer_bytes = added.tokenizer
    pruned = None
    if tokenizer_bytes is None:
        pruned = prune_tokenizer(tokenizer_json, kept.kept_ids)
        tokenizer_bytes = len(tokenizer_json_text(pruned).encode("utf-8"))
    in_graph = [graph for graph in graphs if graph.string_input]
    if in_graph:  # the tokenizer graph, built for real for the shipped vocabulary (stages/string_input.py)
        shipped = original_tokenizer_json(tokenizer_json) if original_numbering else (
            pruned if pruned is not None else prune_tokenizer(tokenizer_json, kept.kept_ids))
        text_plan = string_input_stage.plan_for(source.path, tokenizer_json, shipped, max_length=128)
        model_bytes += sum(string_input_stage.predicted_bytes(text_plan, graph.kind) for graph in in_graph)
    metadata_bytes = format_of(target).metadata_bytes + added.metadata + (string_input_stage.MANIFEST_BYTES if in_graph else 0)
    return SizePrediction(model_bytes=model_bytes + added.model, tokenizer_bytes=tokenizer_bytes, other_bytes=metadata_bytes)
