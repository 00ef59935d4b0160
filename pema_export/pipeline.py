"""The whole flow in one function: corpus -> scan -> prune model -> train -> rewrite tokenizer -> export -> verify -> bundle."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pema_export import __version__
from pema_export.budget import BudgetError
from pema_export.bundle import StagedBundle, check_output_path
from pema_export.corpus import check_corpus_paths, load_examples, read_corpus
from pema_export.errors import CorpusError, TargetError
from pema_export.export import export_onnx
from pema_export.manifest import (
    CorpusRecord,
    HeldOutRecord,
    Manifest,
    ModelRecord,
    ParamsRecord,
    ParityRecord,
    TokenizerRecord,
    TrainingRecord,
    VocabRecord,
)
from pema_export.models import resolve_model
from pema_export.oov import DEFAULT as DEFAULT_OOV
from pema_export.oov import POLICIES, manifest_entries
from pema_export.oov.heldout import full_vocabulary_vectors, heldout_report
from pema_export.pema import check_save_full_dir, load_partial_model, map_ids, original_numbering_config, save_full_model
from pema_export.profiles import load_target
from pema_export.scan import scan_vocabulary
from pema_export.stages import ModelShape, ship, stage_names
from pema_export.stages.formats import format_of
from pema_export.tokenizers import (
    check_supported,
    original_tokenizer_json,
    prune_tokenizer,
    pruned_tokenizer_config,
    tokenizer_family,
    tokenizer_json_text,
)
from pema_export.tokenizers.sentencepiece_model import prune_sentencepiece_files
from pema_export.train import (
    EncodedSet,
    TrainOptions,
    TrainReport,
    fine_tune,
    labels_seen_once,
    resolve_device,
    split_held_out,
    word_spans,
)
from pema_export.verify import PARITY_ATOL, PARITY_SAMPLE, check_parity, check_tokenization, onnx_reference, torch_reference
from pema_export.tasks import TASKS
from pema_export.vocab import KeptVocab, open_tokenizer, unk_token_id


@dataclass(frozen=True)
class ExportOptions:
    corpus: list[str]
    out: str
    model: str | None = None
    target: str = "cpu"
    keep_tokens: str | None = None
    min_count: int = 1
    eval_file: str | None = None
    eval_split: float = 0.1
    max_length: int = 128
    train: TrainOptions = field(default_factory=TrainOptions)
    trust_remote_code: bool = False
    oov: str = DEFAULT_OOV
    max_vocab: int | None = None
    task: str | None = None  # "fill-mask"; None: a classifier for a labelled corpus, else the model as it is
    quantize: str | None = None  # --quantize: overrides the target profile's number format
    save_full: str | None = None  # --save-full DIR: also write a full-vocabulary Hugging Face checkpoint
    prior_words: int | None = None  # --prior-words N: also keep the tokens of the N most frequent words (docs/oov.md)
    prior_lang: list[str] | None = None  # --prior-lang: their language(s); None: detected from the corpus
    max_bytes: int | None = None  # --max-bytes: the most beneficial vocabulary whose predicted bundle fits


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    files: list[Path]
    manifest: Manifest


def run(options: ExportOptions, log: Callable[[str], None] = lambda message: None) -> ExportResult:
    """Export a pruned, fine-tuned (when labelled), verified bundle next to ``options.out``."""
    # Everything that can be checked cheaply is checked before any work starts.
    target = load_target(options.target, quantize=options.quantize)
    out = Path(options.out)
    check_output_path(out)
    format_of(target).check_out(target.name, out)
    corpus_paths = check_corpus_paths(options.corpus)
    eval_paths = check_corpus_paths([options.eval_file]) if options.eval_file else []
    resolve_device(options.train.device)
    if options.save_full:
        check_save_full_dir(Path(options.save_full))
    refusal = POLICIES[options.oov].refusal(TASKS[options.task]) if options.task and options.oov in POLICIES else None
    if refusal:
        raise TargetError(refusal.message)
    source = resolve_model(options.model)
    tokenizer_json = json.loads(source.tokenizer_json.read_text(encoding="utf-8"))
    check_supported(tokenizer_json)
    original_tokenizer = open_tokenizer(source.tokenizer_json)

    # 1-2. Stream the corpus once: count token ids, note labels, keep a parity sample; choose the kept ids.
    log(f"scanning {', '.join(str(p) for p in corpus_paths)} with the {source.name} tokenizer")
    scan = scan_vocabulary(
        source,
        tokenizer_json,
        corpus_paths,
        keep_tokens=options.keep_tokens,
        min_count=options.min_count,
        oov=options.oov,
        max_vocab=options.max_vocab,
        sample_size=PARITY_SAMPLE,
        seed=options.train.seed,
        prior_words=options.prior_words,
        prior_lang=options.prior_lang,
        max_bytes=options.max_bytes,
        target=target,
        task=options.task,
    )
    counts, kept, keep_ids, summary, oov = scan.counts, scan.kept, scan.keep_ids, scan.summary, scan.oov
    if scan.oov_choice:
        log(f"--oov auto: {oov} ({scan.oov_choice['reason']})")
    log(f"vocabulary: keeping {kept.size:,} of {kept.original_size:,} tokens ({counts.texts:,} texts, {counts.tokens:,} tokens)")
    policy = scan.policy
    applied = policy.apply(source, kept, tokenizer_json, log)

    # 3. Build the model with the partial embedding from the start, then fine-tune when labelled.
    task = scan.task
    labelled = task.trains_on(summary.label_kind)
    if summary.labelled and not labelled:
        log(f"--task {task.name}: the corpus labels are ignored (no fine-tuning of the {task.head})")
    if 0 < summary.labelled < summary.texts:
        load_examples(corpus_paths)  # raises, naming the first unlabelled text
    labels = _labels(summary.labels) if labelled else None
    partial = load_partial_model(
        source, kept, task, labels=labels, trust_remote_code=options.trust_remote_code, seed=options.train.seed
    )
    training = None
    if labelled:
        rate = scan.oov_dropout if options.train.oov_dropout is None else options.train.oov_dropout
        dropout = applied.dropout(rate, kept, unk_token_id(tokenizer_json))
        training = _train(partial.model, original_tokenizer, kept, corpus_paths, eval_paths, labels, options, log, dropout, task)

    # 4-7. Rewrite the tokenizer, export, verify, and only then move the bundle into place.
    with StagedBundle(out.parent) as staged, tempfile.TemporaryDirectory(prefix="pema-work-") as work:
        pruned_json = prune_tokenizer(tokenizer_json, kept.kept_ids)
        shipped_json = original_tokenizer_json(tokenizer_json) if policy.ships_original_numbering else pruned_json
        staged.path("tokenizer.json").write_text(tokenizer_json_text(shipped_json), encoding="utf-8")
        id_map = {int(old): new for new, old in enumerate(kept.kept_ids)}
        shipped_id_map = {int(i): int(i) for i in range(kept.original_size)} if policy.ships_original_numbering else id_map
        # Runtimes that read SentencePiece files (onnxruntime-extensions) get the same vocabulary.
        for name, data in prune_sentencepiece_files(source.path, tokenizer_json, shipped_json).items():
            staged.path(name).write_bytes(data)
        tokenizer_config = pruned_tokenizer_config(source.read_tokenizer_config(), shipped_id_map, options.max_length)
        staged.path("tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False), encoding="utf-8")
        config = original_numbering_config(partial.model.config, kept) if policy.ships_original_numbering else partial.model.config
        config.to_json_file(str(staged.path("config.json")))
        model = applied.transform_model(partial.model)
        log(f"exporting {task.name} to ONNX (opset {target.opset})")
        fp32_onnx = Path(work) / "fp32.onnx"  # the reference every later stage is checked against; shipped only by web
        export_onnx(model, task, target, fp32_onnx, pooling=partial.pooling)

        log("verifying tokenization on every corpus text and outputs on a sample with onnxruntime")
        # the checks run on the pruned vocabulary: the shipped file itself, unless the bundle keeps the original
        # numbering (a graph stage such as remap's id table is checked on original ids in ship)
        pruned_tokenizer = open_tokenizer(pruned_json if policy.ships_original_numbering else staged.path("tokenizer.json"))
        fidelity = check_tokenization(original_tokenizer, pruned_tokenizer, kept, (e.text for e in read_corpus(corpus_paths)))
        graph_tokenizer = applied.parity_tokenizer(pruned_tokenizer, staged.path("tokenizer.json"))
        graph_tokenizer.enable_truncation(options.max_length)
        parity = check_parity(
            fp32_onnx,
            torch_reference(model, task, partial.pooling),
            graph_tokenizer,
            summary.sample_texts,
            pad_id=_pad_id(model.config),
        )
        log(f"building the {target.name} bundle: {stage_names(target)}, each checked against the fp32 ONNX")
        reference = onnx_reference(fp32_onnx, graph_tokenizer, summary.sample_texts, pad_id=_pad_id(model.config),
                                   bound=task.quantized_bound)
        shipped = ship(target, fp32_onnx, ModelShape.from_config(model.config), reference, staged, out, Path(work), log,
                       applied.graph_stages())
        heldout = None
        if eval_paths:
            encoder = labels is None and task.closeness_to_full
            if encoder:
                log("held-out: sentence vectors of the original full-vocabulary model, to compare the bundle with")
            heldout = _held_out(staged, target, out, eval_paths, labels, kept, policy, tokenizer_json, options.max_length,
                                source if encoder else None)
            figure = (f"cosine to the full model {heldout.cosine_to_full['mean']:.4f} (mean), nearest-neighbour agreement "
                      f"{heldout.nearest_neighbour_agreement:.3f}" if encoder else f"accuracy {heldout.accuracy}")
            log(f"held-out ({heldout.file}): UNK rate {heldout.unk_rate}, {heldout.model}: {figure}")
        manifest = Manifest(
            pema_export=__version__,
            model=ModelRecord(source.name, type(partial.model).__name__, task.name),
            target=target.as_manifest(),
            tokenizer=TokenizerRecord(tokenizer_family(tokenizer_json)),
            vocab=VocabRecord(
                original=kept.original_size,
                kept=kept.size,
                corpus_used=counts.used_ids,
                min_count=options.min_count,
                oov=oov,
                oov_choice=scan.oov_choice,
                max_vocab=scan.max_vocab,
                max_bytes=options.max_bytes,
                predicted_bytes=scan.predicted_bytes,
                prior=scan.prior.as_manifest(scan.detected_languages) if scan.prior else None,
                policies=manifest_entries(applied),
                keep_tokens=len(keep_ids),
                coverage=scan.coverage(),
            ),
            params=ParamsRecord(partial.original_params, partial.exported_params, partial.original_embedding_params,
                                partial.exported_embedding_params),
            corpus=CorpusRecord([p.name for p in corpus_paths], counts.texts, counts.tokens, labelled),
            training=training,
            heldout=heldout,
            parity=ParityRecord(
                texts_checked=parity.texts_checked,
                sample=f"all texts, or a seeded sample of {PARITY_SAMPLE}",
                tokenization_texts_checked=fidelity.texts_checked,
                tokenization_mismatches=fidelity.tokenization_mismatches,
                texts_with_dropped_tokens=fidelity.texts_with_dropped_tokens,
                max_abs_diff=parity.max_abs_diff,
                atol=PARITY_ATOL,
                outputs=list(parity.outputs),
            ),
            stages=shipped.stages,
            embedding_bytes=shipped.embedding_bytes,
            mobile=shipped.mobile,
            files=staged.file_entries(),
            versions=_versions(),
        )
        staged.write_manifest(manifest.to_json())
        if options.max_bytes is not None:
            _check_max_bytes(staged, options.max_bytes, scan.predicted_bytes)
        files = staged.commit()
    log(f"wrote {len(files)} files to {out.parent}")
    if options.save_full:
        # After the bundle: a failed export leaves no full checkpoint either; the folder appears whole or not at all.
        save_full_model(partial.model, kept, source, Path(options.save_full))
        log(f"wrote the full-vocabulary checkpoint (trained rows merged into {source.name}) to {options.save_full}")
    return ExportResult(out_dir=out.parent, files=files, manifest=manifest)


def _check_max_bytes(staged: StagedBundle, max_bytes: int, predicted: int | None) -> None:
    """--max-bytes is a promise: a bundle over it is not written (the prediction chose the vocabulary, this checks it)."""
    written = sum(staged.path(name).stat().st_size for name in staged.files())
    if written > max_bytes:
        over = written - max_bytes
        raise BudgetError(
            f"--max-bytes {max_bytes:,}: the bundle came to {written:,} bytes, {over:,} over (predicted "
            f"{predicted:,}); nothing was written; rerun with --max-bytes {max_bytes - over:,} to fit"
        )


def _labels(seen: set[str]) -> list[str]:
    labels = sorted(seen)
    if len(labels) < 2:
        raise CorpusError(f"the corpus has a single label {labels[0]!r}: a classifier needs at least two classes")
    return labels


def _held_out(staged, target, out: Path, eval_paths, labels, kept: KeptVocab, policy, tokenizer_json: dict, max_length: int,
              full_model=None) -> HeldOutRecord:
    """UNK rate and accuracy (classifier) or, given the encoder's ``full_model`` (its source), closeness to it of the
    shipped model with the shipped tokenizer on the --eval texts, one text at a time."""
    examples = load_examples(eval_paths)
    texts = [e.text for e in examples]
    tokenizer = open_tokenizer(staged.path("tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    unk_shipped, dropped_ids = policy.heldout_ids(kept, unk_token_id(tokenizer_json))
    model_name = format_of(target).loaded_name(out)
    label_ids = {label: i for i, label in enumerate(labels)} if labels else None
    report = heldout_report(
        staged.path(model_name),
        tokenizer,
        texts,
        [label_ids[e.label] for e in examples] if label_ids else None,
        unk_id=unk_shipped,
        dropped_ids=dropped_ids,
        full_vectors=full_vocabulary_vectors(full_model, texts, max_length) if full_model else None,
    )
    return report.as_manifest(eval_paths[0].name, model_name)


def _train(model, tokenizer, kept: KeptVocab, corpus_paths, eval_paths, labels, options: ExportOptions, log, dropout, task) -> TrainingRecord:
    label2id = {label: i for i, label in enumerate(labels)}
    examples = load_examples(corpus_paths)
    if eval_paths:
        train_examples, eval_examples = examples, load_examples(eval_paths)
        unknown = sorted({e.label for e in eval_examples} - set(labels))
        if unknown:
            raise CorpusError(f"--eval file has labels the corpus does not: {', '.join(map(repr, unknown))}")
    else:
        train_idx, eval_idx = split_held_out([e.label for e in examples], options.eval_split, options.train.seed)
        once = labels_seen_once([e.label for e in examples])
        if once:
            log(f"labels with a single text are trained on but not held out: {', '.join(map(repr, once))}")
        train_examples, eval_examples = [examples[i] for i in train_idx], [examples[i] for i in eval_idx]
    tokenizer = open_tokenizer(json.loads(tokenizer.to_str()))
    tokenizer.enable_truncation(options.max_length)

    def encode(batch) -> EncodedSet:
        encodings = tokenizer.encode_batch([e.text for e in batch])
        ids = [map_ids(kept, np.asarray(enc.ids, dtype=np.int64)).tolist() for enc in encodings]
        return EncodedSet(input_ids=ids, labels=[label2id[e.label] for e in batch], word_spans=[word_spans(enc.word_ids) for enc in encodings])

    train_set, eval_set = encode(train_examples), encode(eval_examples)
    log(f"fine-tuning on {len(train_set)} texts, {len(eval_set)} held out, {options.train.epochs} epochs")
    report: TrainReport = fine_tune(model, train_set, eval_set, _pad_id(model.config), options.train, dropout=dropout,
                                    metric=task.metric)
    log(f"held-out accuracy {report.eval_accuracy:.4f} after {report.epochs} epochs ({report.seconds:.0f} s)")
    return TrainingRecord(
        epochs=report.epochs,
        train_size=report.train_size,
        eval_size=report.eval_size,
        eval_source="--eval file" if eval_paths else f"stratified {options.eval_split:.0%} split of the corpus",
        eval_accuracy=round(report.eval_accuracy, 6),
        eval_accuracy_per_epoch=[round(a, 6) for a in report.eval_accuracy_per_epoch],
        lr=options.train.lr,
        batch_size=options.train.batch_size,
        max_length=options.max_length,
        seed=options.train.seed,
        oov_dropout=dropout.rate if dropout else 0.0,
        oov_dropout_substitute=dropout.substitute_name if dropout else None,
        labels=labels,
    )


def _pad_id(config) -> int:
    return config.pad_token_id if isinstance(config.pad_token_id, int) else 0


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions
