"""The export as a short sequence of named steps, each from data to data:

prepare -> scan -> string input plan -> partial model -> train -> tokenizer -> export -> verify -> ship -> held out ->
manifest -> commit

``run`` reads as that sequence; each step below is one function, its inputs the records earlier steps returned.
In a data-parallel launch (accelerate launch, torchrun) every process runs the steps up to training; process 0
alone goes on, the others return before anything is written. Tokenization fidelity, which needs only the
tokenizers, runs in a helper thread beside the export (``tokenizers`` releases the GIL). Each step's wall seconds
are logged and written to ``pema-timings.json`` beside the manifest (timings.py).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tokenizers import Tokenizer

from pema_export import __version__
from pema_export.budget import BudgetError
from pema_export.bundle import StagedBundle, check_output_path
from pema_export.corpus import check_corpus_paths, iter_texts, load_examples, read_corpus
from pema_export.devices import Placement, resolve_placement, to_cpu_fp32
from pema_export.errors import CorpusError, ModelError, TargetError, TrainingError
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
from pema_export.models import ModelSource
from pema_export.oov import DEFAULT as DEFAULT_OOV
from pema_export.oov import POLICIES, AppliedPolicy, manifest_entries
from pema_export.oov.heldout import full_vocabulary_vectors, heldout_report
from pema_export.pema import PartialModel, check_save_full_dir, load_partial_model, map_ids, original_numbering_config, save_full_model
from pema_export.profiles import Target, load_target
from pema_export.scan import VocabScan, open_source, scan_vocabulary
from pema_export.string_input import check_extensions
from pema_export.stages import ModelShape, Shipped, ship, stage_names
from pema_export.stages import string_input as string_input_stage
from pema_export.stages.formats import format_of
from pema_export.tasks import TASKS, Task, rounded
from pema_export.tokenizers import original_tokenizer_json, prune_tokenizer, pruned_tokenizer_config, tokenizer_family, tokenizer_json_text
from pema_export.timings import TIMINGS_NAME, Timings
from pema_export.tokenizers.sentencepiece_model import prune_sentencepiece_files
from pema_export.train import EncodedSet, TrainOptions, fine_tune, labels_seen_once, split_held_out, word_spans
from pema_export.verify import (
    PARITY_ATOL,
    PARITY_SAMPLE,
    FidelityReport,
    OnnxReference,
    ParityReport,
    check_parity,
    check_tokenization,
    parity_and_reference,
    torch_reference,
)
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
    task: str | None = None  # --task (tasks.TASKS); None: the task the corpus's labels or the checkpoint's head imply
    quantize: str | None = None  # --quantize: overrides the target profile's number format
    save_full: str | None = None  # --save-full DIR: also write a full-vocabulary Hugging Face checkpoint
    prior_words: int | None = None  # --prior-words N: also keep the tokens of the N most frequent words (docs/oov.md)
    prior_lang: list[str] | None = None  # --prior-lang: their language(s); None: detected from the corpus
    max_bytes: int | None = None  # --max-bytes: the most beneficial vocabulary whose predicted bundle fits
    tail_row_bytes: int | None = None  # --tail-row-bytes: bytes per row of the compressed tail (--oov tail)
    tokenizer: str | None = None  # --tokenizer: "in-graph" ships a model that takes strings; None: the profile's ("ids")


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    files: list[Path]
    manifest: Manifest
    timings: dict  # what pema-timings.json holds (timings.Timings.as_json)


@dataclass(frozen=True)
class Plan:
    """What ``prepare`` checked before any work, and the model it opened."""

    options: ExportOptions
    target: Target
    out: Path
    corpus_paths: list[Path]
    eval_paths: list[Path]
    source: ModelSource
    tokenizer_json: dict
    original_tokenizer: Tokenizer
    placement: Placement  # where training runs, and which process of a launch this is


@dataclass(frozen=True)
class Vocabulary:
    """What ``scan`` found and chose: the kept ids, the task, the labels it trains on, the OOV policy as applied."""

    scan: VocabScan
    applied: AppliedPolicy
    labels: list[str] | None  # None: the model is exported as it is, without fine-tuning

    @property
    def kept(self) -> KeptVocab:
        return self.scan.kept


@dataclass(frozen=True)
class Tokenizers:
    """The rewritten tokenizer.json and the one that ships (they differ when the policy keeps the original ids)."""

    pruned_json: dict
    shipped_json: dict


@dataclass(frozen=True)
class Exported:
    fp32: Path  # the reference every later stage is checked against; shipped only by a format that keeps fp32
    model: object  # the torch model the graph was exported from (after the policy's transform)


@dataclass(frozen=True)
class Verified:
    fidelity: FidelityReport
    parity: ParityReport
    reference: OnnxReference  # the fp32 ONNX's outputs on the corpus sample, for the stages


def run(options: ExportOptions, log: Callable[[str], None] = lambda message: None) -> ExportResult | None:
    """Export a pruned, fine-tuned (when labelled), verified bundle next to ``options.out``; None in the processes of
    a launch other than process 0, which train and write nothing."""
    timings = Timings(log)
    with timings.step("prepare"):
        plan = prepare(options)
    if not plan.placement.processes.is_main:
        return train_beside(plan)
    # The output folder is claimed before any work (a second export to it is refused); everything, scratch files
    # included, is written to its staging folder and moved into place only after every check passed. In a launch of
    # several processes, process 0 claims it after training: a process that dies in training makes the launcher kill
    # the rest, and a killed process 0 must not leave a staging folder behind.
    launched = plan.placement.processes.count > 1
    with ExitStack() as claimed:
        staged = None if launched else claimed.enter_context(StagedBundle(plan.out.parent))
        with timings.step("scan"):
            vocabulary = scan(plan, log)
        with timings.step("string input plan"):
            text_plan = string_input_plan(plan, vocabulary, log)
        with timings.step("partial model"):
            partial = partial_model(plan, vocabulary)
        training = None
        if vocabulary.labels is not None:
            with timings.step("train"):
                training = train(plan, vocabulary, partial, log)
        staged = staged or claimed.enter_context(StagedBundle(plan.out.parent))
        with timings.step("tokenizer"):
            tokenizers = write_tokenizer(plan, vocabulary, partial, staged)
        with beside(timings, "fidelity", "export", lambda stop: fidelity(plan, vocabulary, tokenizers, staged, log, stop)) as checked:
            with timings.step("export"):
                exported = export(plan, vocabulary, partial, staged.work, log)
            with timings.step("fidelity wait"):  # what fidelity still needed once the export was done
                fidelity_report = checked.result()
        with timings.step("parity"):
            verified = verify(plan, vocabulary, tokenizers, partial, exported, staged, fidelity_report, log)
        shipped = ship_stages(plan, vocabulary, exported, verified, text_plan, staged, staged.work, log, timings)
        with timings.step("held out"):
            heldout = held_out(plan, vocabulary, staged, log)
        with timings.step("manifest"):
            manifest = build_manifest(plan, vocabulary, partial, training, heldout, verified, shipped, staged)
        files = commit(plan, vocabulary, manifest, staged, timings)
    post, trained = timings.post_training_seconds(), timings.seconds.get("train", 0.0)
    log(f"wrote {len(files)} files to {plan.out.parent}; the steps after training took {post:.0f} s"
        + (f", {post / trained:.2f}x training's {trained:.0f} s" if training else ""))
    save_full(plan, vocabulary, partial, log)
    return ExportResult(out_dir=plan.out.parent, files=files, manifest=manifest, timings=timings.as_json())


@contextmanager
def beside(timings: Timings, name: str, other: str, step: Callable[[Callable[[], bool]], object]) -> Iterator[Future]:
    """Run ``step`` in a helper thread while the body (``other``) runs; yields its future. If the body fails, the
    step is told to stop (``step`` polls the function it is given) and waited for."""
    stop = threading.Event()

    def timed():
        with timings.step(name, beside=other):
            return step(stop.is_set)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pema-{name}") as pool:
        future = pool.submit(timed)
        try:
            yield future
        except BaseException:
            stop.set()
            raise


def train_beside(plan: Plan) -> None:
    """A process of a launch other than process 0: the same scan, partial model and training (its share of every
    batch), silently; it never touches ``--out``."""
    quiet = lambda message: None  # noqa: E731
    vocabulary = scan(plan, quiet)
    train(plan, vocabulary, partial_model(plan, vocabulary), quiet)
    return None


def prepare(options: ExportOptions) -> Plan:
    """Everything that can be checked cheaply, before any work starts; the model and its tokenizer opened."""
    target = load_target(options.target, quantize=options.quantize, tokenizer=options.tokenizer)
    out = Path(options.out)
    check_output_path(out)
    format_of(target).check_out(target.name, out)
    corpus_paths = check_corpus_paths(options.corpus)
    eval_paths = check_corpus_paths([options.eval_file]) if options.eval_file else []
    placement = resolve_placement(options.train.device, options.train.precision)
    if options.save_full:
        check_save_full_dir(Path(options.save_full))
    refusal = POLICIES[options.oov].refusal(TASKS[options.task]) if options.task and options.oov in POLICIES else None
    if refusal:
        raise TargetError(refusal.message)
    if target.tokenizer == "in-graph":
        check_extensions()  # one line when onnxruntime-extensions is missing or will not load
    source, tokenizer_json = open_source(options.model)
    positions = source.max_positions()
    if positions is not None and options.max_length > positions:
        raise ModelError(f"--max-length {options.max_length}: {source.name} has {positions} positions; use at most {positions}")
    if target.tokenizer == "in-graph":
        # what the ops cannot reproduce does not depend on the vocabulary: refuse it before reading the corpus
        string_input_stage.plan_for(source.path, tokenizer_json, tokenizer_json, max_length=options.max_length)
    return Plan(options, target, out, corpus_paths, eval_paths, source, tokenizer_json, open_tokenizer(source.tokenizer_json),
                placement)


def scan(plan: Plan, log: Callable[[str], None]) -> Vocabulary:
    """Stream the corpus once: count token ids, note labels, keep a parity sample; choose the kept ids, the task
    and the OOV policy, and apply the policy."""
    options = plan.options
    log(f"scanning {', '.join(str(p) for p in plan.corpus_paths)} with the {plan.source.name} tokenizer")
    found = scan_vocabulary(
        plan.source, plan.tokenizer_json, plan.corpus_paths, keep_tokens=options.keep_tokens, min_count=options.min_count,
        oov=options.oov, max_vocab=options.max_vocab, sample_size=PARITY_SAMPLE, seed=options.train.seed,
        prior_words=options.prior_words, prior_lang=options.prior_lang, max_bytes=options.max_bytes, target=plan.target,
        task=options.task, tail_row_bytes=options.tail_row_bytes, oov_dropout=options.train.oov_dropout,
    )
    counts, kept, summary = found.counts, found.kept, found.summary
    if found.oov_choice:
        log(f"--oov auto: {found.oov} ({found.oov_choice['reason']})")
    log(f"vocabulary: keeping {kept.size:,} of {kept.original_size:,} tokens ({counts.texts:,} texts, {counts.tokens:,} tokens)")
    applied = found.policy.apply(plan.source, kept, plan.tokenizer_json, log)
    trains = found.task.trains_on(summary.label_kind)
    if options.task and summary.labelled and not trains:
        log(f"--task {found.task.name}: the corpus labels are ignored (no fine-tuning of the {found.task.head})")
    if 0 < summary.labelled < summary.texts:
        load_examples(plan.corpus_paths)  # raises, naming the first unlabelled text
    return Vocabulary(found, applied, _labels(found.task, summary.labels) if trains else None)


def string_input_plan(plan: Plan, vocabulary: Vocabulary, log: Callable[[str], None]):
    """--tokenizer in-graph: the in-graph tokenizer planned for the tokenizer.json the bundle will ship (pruned or
    original), before any training, so a refusal costs nothing; None otherwise."""
    if plan.target.tokenizer != "in-graph":
        return None
    shipped = _tokenizer_jsons(plan, vocabulary).shipped_json
    text_plan = string_input_stage.plan_for(plan.source.path, plan.tokenizer_json, shipped, max_length=plan.options.max_length)
    log(f"--tokenizer in-graph: {text_plan.family} with {', '.join(text_plan.ops)} (onnxruntime-extensions), exact on "
        "every corpus and --eval text or the export fails")
    return text_plan


def partial_model(plan: Plan, vocabulary: Vocabulary) -> PartialModel:
    """The model for the task with the partial embedding from the start: only the kept rows ever exist."""
    return load_partial_model(plan.source, vocabulary.kept, vocabulary.scan.task, labels=vocabulary.labels,
                              trust_remote_code=plan.options.trust_remote_code, seed=plan.options.train.seed)


def train(plan: Plan, vocabulary: Vocabulary, partial: PartialModel, log: Callable[[str], None]) -> TrainingRecord | None:
    """Fine-tune the partial model in place on the corpus's labels, where ``plan.placement`` says; it comes back on
    the CPU in fp32 for every later step. None when the corpus has no labels to train on."""
    if vocabulary.labels is None:
        return None
    options, task = plan.options, vocabulary.scan.task
    train_options = options.train.resolved(task.epochs, task.lr)
    rate = vocabulary.scan.oov_dropout if options.train.oov_dropout is None else options.train.oov_dropout
    dropout = vocabulary.applied.dropout(rate, vocabulary.kept, unk_token_id(plan.tokenizer_json))
    train_set, eval_set = _training_sets(plan, vocabulary, log)
    placement = plan.placement
    log(f"fine-tuning on {len(train_set)} texts, {len(eval_set)} held out, {train_options.epochs} epochs at lr "
        f"{train_options.lr:g} {_where(placement, options.train.batch_size)}")
    metric, labels = task.metric, vocabulary.labels
    # one progress bar for a launch: process 0's
    train_options = replace(train_options, progress=train_options.progress and placement.processes.is_main)
    report = fine_tune(partial.model, train_set, eval_set, _pad_id(partial.model.config), train_options, dropout=dropout,
                       metric=lambda predicted, targets: metric(predicted, targets, labels))
    # The one hand-over: whatever device and precision trained it, every later step (the policy's transform, export,
    # parity reference, held-out figures, --save-full) gets the model on the CPU in fp32.
    to_cpu_fp32(partial.model)
    if not all(bool(p.isfinite().all()) for p in partial.model.parameters()):
        raise TrainingError(f"fine-tuning diverged: the weights are no longer finite after training at --lr "
                            f"{train_options.lr:g}; lower --lr")
    log(f"held-out {metric.describe(report.eval_figures)} after {report.epochs} epochs ({report.seconds:.0f} s)")
    evaluation = {f"eval_{name}": value for name, value in rounded(report.eval_figures).items()}
    evaluation[f"eval_{metric.name}_per_epoch"] = [round(value, 6) for value in report.eval_accuracy_per_epoch]
    return TrainingRecord(
        epochs=report.epochs,
        train_size=report.train_size,
        eval_size=report.eval_size,
        eval_source="--eval file" if plan.eval_paths else f"stratified {options.eval_split:.0%} split of the corpus",
        evaluation=evaluation,
        lr=train_options.lr,
        batch_size=options.train.batch_size,
        max_length=options.max_length,
        seed=options.train.seed,
        **_placement_record(report.placement),
        oov_dropout=dropout.rate if dropout else 0.0,
        oov_dropout_substitute=dropout.substitute_name if dropout else None,
        labels=vocabulary.labels,
    )


def write_tokenizer(plan: Plan, vocabulary: Vocabulary, partial: PartialModel, staged: StagedBundle) -> Tokenizers:
    """tokenizer.json, tokenizer_config.json, config.json (and a SentencePiece model) in the numbering the bundle
    ships: the kept ids 0..k-1, or the original ids when the policy keeps them."""
    kept, original_numbering = vocabulary.kept, vocabulary.scan.policy.ships_original_numbering
    tokenizers = _tokenizer_jsons(plan, vocabulary)
    pruned_json, shipped_json = tokenizers.pruned_json, tokenizers.shipped_json
    staged.path("tokenizer.json").write_text(tokenizer_json_text(shipped_json), encoding="utf-8")
    if original_numbering:
        shipped_id_map = {int(i): int(i) for i in range(kept.original_size)}
    else:
        shipped_id_map = {int(old): new for new, old in enumerate(kept.kept_ids)}
    # Runtimes that read SentencePiece files (onnxruntime-extensions) get the same vocabulary.
    for name, data in prune_sentencepiece_files(plan.source.path, plan.tokenizer_json, shipped_json).items():
        staged.path(name).write_bytes(data)
    tokenizer_config = pruned_tokenizer_config(plan.source.read_tokenizer_config(), shipped_id_map, plan.options.max_length)
    staged.path("tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False), encoding="utf-8")
    config = original_numbering_config(partial.model.config, kept) if original_numbering else partial.model.config
    config.to_json_file(str(staged.path("config.json")))
    return tokenizers


def _tokenizer_jsons(plan: Plan, vocabulary: Vocabulary) -> Tokenizers:
    pruned_json = prune_tokenizer(plan.tokenizer_json, vocabulary.kept.kept_ids)
    original_numbering = vocabulary.scan.policy.ships_original_numbering
    return Tokenizers(pruned_json, original_tokenizer_json(plan.tokenizer_json) if original_numbering else pruned_json)


def export(plan: Plan, vocabulary: Vocabulary, partial: PartialModel, work: Path, log: Callable[[str], None]) -> Exported:
    """The fp32 ONNX graph of the trained model, as the policy transforms it."""
    model = vocabulary.applied.transform_model(partial.model)
    log(f"exporting {vocabulary.scan.task.name} to ONNX (opset {plan.target.opset})")
    fp32 = work / "fp32.onnx"
    export_onnx(model, vocabulary.scan.task, plan.target, fp32, pooling=partial.pooling)
    return Exported(fp32, model)


def fidelity(plan: Plan, vocabulary: Vocabulary, tokenizers: Tokenizers, staged: StagedBundle, log: Callable[[str], None],
             cancelled: Callable[[], bool] = lambda: False) -> FidelityReport:
    """Tokenization fidelity on every corpus text, streamed; tokenizers only, so it runs beside the export."""
    log("verifying tokenization on every corpus text, beside the export")
    # tokenizers of its own: it runs in another thread, and the parity check sets truncation on the one it uses
    pruned = open_tokenizer(_checked_tokenizer(vocabulary, tokenizers, staged))
    texts = (e.text for e in read_corpus(plan.corpus_paths))
    return check_tokenization(open_tokenizer(plan.tokenizer_json), pruned, vocabulary.kept, texts, cancelled)


def verify(plan: Plan, vocabulary: Vocabulary, tokenizers: Tokenizers, partial: PartialModel, exported: Exported,
           staged: StagedBundle, fidelity: FidelityReport, log: Callable[[str], None]) -> Verified:
    """The graph against the torch model on the parity sample, in the one pass that also keeps the fp32 graph's
    outputs for the stages' checks; ``fidelity`` is the tokenization check's report (done beside the export)."""
    log("verifying outputs on a sample with onnxruntime")
    shipped = staged.path("tokenizer.json")
    tokenizer = vocabulary.applied.parity_tokenizer(open_tokenizer(_checked_tokenizer(vocabulary, tokenizers, staged)), shipped)
    tokenizer.enable_truncation(plan.options.max_length)
    task, sample, pad_id = vocabulary.scan.task, vocabulary.scan.summary.sample_texts, _pad_id(exported.model.config)
    torch_model = torch_reference(exported.model, task, partial.pooling)
    parity, reference = parity_and_reference(exported.fp32, torch_model, tokenizer, sample, pad_id=pad_id,
                                             bound=task.quantized_bound)
    extra = vocabulary.applied.parity_texts(plan.options.train.seed)
    if extra:  # inputs that reach what the policy added to the model, which corpus texts never do
        added = check_parity(exported.fp32, torch_model, tokenizer, extra, pad_id=pad_id)
        vocabulary.applied.record_parity(added.texts_checked, added.max_abs_diff)
    return Verified(fidelity, parity, reference)


def _checked_tokenizer(vocabulary: Vocabulary, tokenizers: Tokenizers, staged: StagedBundle) -> dict | Path:
    """The pruned vocabulary as checked: in the shipped file itself, unless the bundle ships the original numbering
    (a graph stage such as remap's id table is then checked on original ids in ship)."""
    return tokenizers.pruned_json if vocabulary.scan.policy.ships_original_numbering else staged.path("tokenizer.json")


def ship_stages(plan: Plan, vocabulary: Vocabulary, exported: Exported, verified: Verified, text_plan, staged: StagedBundle,
                work: Path, log: Callable[[str], None], timings: Timings | None = None) -> Shipped:
    """The target's stages (and the policy's graph stages, and the string input), each checked against the fp32 ONNX;
    the files staged."""
    log(f"building the {plan.target.name} bundle: {stage_names(plan.target)}, each checked against the fp32 ONNX")
    graph_stages = vocabulary.applied.graph_stages()
    if text_plan is not None:
        # padded as the stages' reference pads (the exported model's pad id, in the ids it takes)
        text_plan = replace(text_plan, pad_id=_pad_id(exported.model.config))
        graph_stages = (*graph_stages, string_input_stage.StringInput(
            text_plan, corpus_texts=lambda: iter_texts(plan.corpus_paths), heldout_texts=tuple(iter_texts(plan.eval_paths)) if plan.eval_paths else ()))
    return ship(plan.target, exported.fp32, ModelShape.from_config(exported.model.config), verified.reference, staged,
                plan.out, work, log, graph_stages, timings=timings)


def held_out(plan: Plan, vocabulary: Vocabulary, staged: StagedBundle, log: Callable[[str], None]) -> HeldOutRecord | None:
    """With --eval: the shipped model with the shipped tokenizer on texts the corpus does not contain, one text at a
    time: UNK rate and the task's metric, or an encoder's closeness to the original full-vocabulary model."""
    if not plan.eval_paths:
        return None
    examples = load_examples(plan.eval_paths)
    texts, labels, max_length = [e.text for e in examples], vocabulary.labels, plan.options.max_length
    encoder = labels is None and vocabulary.scan.task.closeness_to_full
    if encoder:
        log("held-out: sentence vectors of the original full-vocabulary model, to compare the bundle with")
    tokenizer = open_tokenizer(staged.path("tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    unk_id, dropped_ids = vocabulary.scan.policy.heldout_ids(vocabulary.kept, unk_token_id(plan.tokenizer_json))
    model_name = format_of(plan.target).loaded_name(plan.out)
    task = vocabulary.scan.task
    targets = None
    if labels:
        # the targets as the shipped tokenizer splits the texts (a word the corpus never had may split differently)
        label_ids = {label: i for i, label in enumerate(labels)}
        targets = [task.targets(e, enc, label_ids) for e, enc in zip(examples, tokenizer.encode_batch(texts))]
    report = heldout_report(
        staged.path(model_name), tokenizer, texts, targets, task, label_names=labels, unk_id=unk_id, dropped_ids=dropped_ids,
        full_vectors=full_vocabulary_vectors(plan.source, texts, max_length) if encoder else None,
        text_input=plan.target.tokenizer == "in-graph",
    )
    record = report.as_manifest(plan.eval_paths[0].name, model_name)
    if encoder:
        figure = (f"cosine to the full model {record.cosine_to_full['mean']:.4f} (mean), nearest-neighbour agreement "
                  f"{record.nearest_neighbour_agreement:.3f}")
    else:
        figure = task.metric.describe(report.score.figures) if report.score else "no labels"
    log(f"held-out ({record.file}): UNK rate {record.unk_rate}, {record.model}: {figure}")
    return record


def build_manifest(plan: Plan, vocabulary: Vocabulary, partial: PartialModel, training: TrainingRecord | None,
                   heldout: HeldOutRecord | None, verified: Verified, shipped: Shipped, staged: StagedBundle) -> Manifest:
    found, kept, fidelity, parity = vocabulary.scan, vocabulary.kept, verified.fidelity, verified.parity
    return Manifest(
        pema_export=__version__,
        model=ModelRecord(plan.source.name, type(partial.model).__name__, found.task.name),
        target=plan.target.as_manifest(),
        tokenizer=TokenizerRecord(tokenizer_family(plan.tokenizer_json)),
        vocab=VocabRecord(
            original=kept.original_size, kept=kept.size, corpus_used=found.counts.used_ids,
            min_count=plan.options.min_count, oov=found.oov, oov_choice=found.oov_choice, max_vocab=found.max_vocab,
            max_bytes=plan.options.max_bytes, predicted_bytes=found.predicted_bytes,
            prior=found.prior.as_manifest(found.detected_languages) if found.prior else None,
            policies=manifest_entries(vocabulary.applied), keep_tokens=len(found.keep_ids), coverage=found.coverage(),
        ),
        params=ParamsRecord(partial.original_params, partial.exported_params, partial.original_embedding_params,
                            partial.exported_embedding_params),
        corpus=CorpusRecord([p.name for p in plan.corpus_paths], found.counts.texts, found.counts.tokens,
                            vocabulary.labels is not None),
        training=training,
        heldout=heldout,
        parity=ParityRecord(
            texts_checked=parity.texts_checked, sample=f"all texts, or a seeded sample of {PARITY_SAMPLE}",
            tokenization_texts_checked=fidelity.texts_checked, tokenization_mismatches=fidelity.tokenization_mismatches,
            texts_with_dropped_tokens=fidelity.texts_with_dropped_tokens, max_abs_diff=parity.max_abs_diff,
            atol=PARITY_ATOL, outputs=list(parity.outputs),
        ),
        stages=shipped.stages,
        embedding_bytes=shipped.embedding_bytes,
        mobile=shipped.mobile,
        string_input=shipped.string_input,
        files=staged.file_entries(),
        versions=_versions(),
    )


def commit(plan: Plan, vocabulary: Vocabulary, manifest: Manifest, staged: StagedBundle,
           timings: Timings | None = None) -> list[Path]:
    """Write the manifest, hold the bundle to --max-bytes, write the timings, and move it all into place."""
    with (timings or Timings()).step("commit"):
        staged.write_manifest(manifest.to_json())
        if plan.options.max_bytes is not None:
            _check_max_bytes(staged, plan.options.max_bytes, vocabulary.scan.predicted_bytes)
    if timings is not None:  # after the --max-bytes check: that holds the bundle an app ships, this is not part of it
        staged.path(TIMINGS_NAME).write_text(timings.to_text(), encoding="utf-8")
    return staged.commit()


def save_full(plan: Plan, vocabulary: Vocabulary, partial: PartialModel, log: Callable[[str], None]) -> None:
    """--save-full: after the bundle, so a failed export leaves no full checkpoint either; the folder appears whole or
    not at all."""
    if not plan.options.save_full:
        return
    save_full_model(partial.model, vocabulary.kept, plan.source, Path(plan.options.save_full))
    log(f"wrote the full-vocabulary checkpoint (trained rows merged into {plan.source.name}) to {plan.options.save_full}")


def _check_max_bytes(staged: StagedBundle, max_bytes: int, predicted: int | None) -> None:
    """--max-bytes is a promise: a bundle over it is not written (the prediction chose the vocabulary, this checks it)."""
    written = sum(staged.path(name).stat().st_size for name in staged.files())
    if written > max_bytes:
        over = written - max_bytes
        raise BudgetError(
            f"--max-bytes {max_bytes:,}: the bundle came to {written:,} bytes, {over:,} over (predicted "
            f"{predicted:,}); nothing was written; rerun with --max-bytes {max_bytes - over:,} to fit"
        )


def _labels(task: Task, seen: set[str]) -> list[str]:
    labels = task.label_names(seen)
    if len(labels) < 2:
        raise CorpusError(f"the corpus has a single label {labels[0]!r}: a classifier needs at least two classes")
    return labels


def _where(placement: Placement, batch_size: int) -> str:
    """'on cuda:0 (--device auto: ...) in bf16, 2 processes sharing each batch of 16' for the log."""
    why = "" if placement.reason == f"--device {placement.device}" else f" ({placement.reason})"
    count = placement.processes.count
    return f"on {placement.device}{why} in {placement.precision}" + (f", {count} processes sharing each batch of {batch_size}" if count > 1 else "")


def _placement_record(placement: Placement) -> dict:
    return dict(device=str(placement.device), device_reason=placement.reason, precision=placement.precision,
                processes=placement.processes.count)


def _training_sets(plan: Plan, vocabulary: Vocabulary, log: Callable[[str], None]) -> tuple[EncodedSet, EncodedSet]:
    """The corpus split into train and held-out sets (or the --eval file as held out), encoded in the kept ids."""
    labels, options, task = vocabulary.labels, plan.options, vocabulary.scan.task
    tokenizer = open_tokenizer(json.loads(plan.original_tokenizer.to_str()))
    examples = _training_examples(plan.corpus_paths, task, tokenizer, options.max_length)
    if plan.eval_paths:
        train_examples, eval_examples = examples, _training_examples(plan.eval_paths, task, tokenizer, options.max_length)
        if all(e.label_kind is None for e in eval_examples):
            raise CorpusError(f"--eval {plan.eval_paths[0]} is unlabelled: a {task.name} model is scored on labelled "
                              "texts (label<TAB>text, a label column, or tagged tokens)")
        if {e.label_kind for e in eval_examples} != {task.label_kind}:
            raise CorpusError(f"--eval file {plan.eval_paths[0]} does not carry the corpus's kind of labels ({task.label_kind})")
        known = {value for e in examples for value in e.label_values}
        unknown = sorted({value for e in eval_examples for value in e.label_values} - known)
        if unknown:
            raise CorpusError(f"--eval file has labels the corpus does not: {', '.join(map(repr, unknown))}")
    else:
        # texts labelled as a whole are split stratified by label; sentences with entities as one group
        strata = [e.label for e in examples]
        train_idx, eval_idx = split_held_out(strata, options.eval_split, options.train.seed)
        once = labels_seen_once([label for label in strata if label is not None])
        if once:
            log(f"labels with a single text are trained on but not held out: {', '.join(map(repr, once))}")
        train_examples, eval_examples = [examples[i] for i in train_idx], [examples[i] for i in eval_idx]
    tokenizer.enable_truncation(options.max_length)
    label_ids, targets = {label: i for i, label in enumerate(labels)}, task.targets

    def encode(batch) -> EncodedSet:
        encodings = tokenizer.encode_batch([e.text for e in batch])
        ids = [map_ids(vocabulary.kept, np.asarray(enc.ids, dtype=np.int64)).tolist() for enc in encodings]
        return EncodedSet(input_ids=ids, labels=[targets(e, enc, label_ids) for e, enc in zip(batch, encodings)],
                          word_spans=[word_spans(enc.word_ids) for enc in encodings])

    return encode(train_examples), encode(eval_examples)


def _training_examples(paths: list[Path], task: Task, tokenizer: Tokenizer, max_length: int) -> list:
    """The labelled examples of ``paths``; where every piece is labelled (Task.labels_per_token), a text over
    --max-length is refused: truncating it would drop labels silently."""
    examples = load_examples(paths)
    if task.labels_per_token:
        for example, encoding in zip(examples, tokenizer.encode_batch([e.text for e in examples])):
            if len(encoding.ids) > max_length:
                raise CorpusError(
                    f"{example.origin or repr(example.text[:60])}: the sentence is {len(encoding.ids)} pieces (special "
                    f"tokens included), over --max-length {max_length}; its last words would lose their labels: split "
                    "it, or raise --max-length"
                )
    return examples


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
