"""The manifest (``pema-manifest.json``) as typed records: the export's steps write them, the summary, ``size`` and
``check`` read them.

``to_json`` gives the keys in the order the README documents ("The manifest"), so the same export writes the same
bytes. ``from_json`` reads a manifest from disk, an older or partial one included (a size baseline keeps only
``model``, ``target``, ``vocab`` and ``files``): a missing section or key reads as None.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

# field metadata: "record" names the record class of a nested section; "inline" spreads a dict's keys in place of
# the field (the OOV policies' entries in vocab); "omit_none" leaves the key out when its value is None.
_INLINE = {"inline": True}
_OMIT_NONE = {"omit_none": True}


class _Record:
    def to_json(self) -> dict:
        data = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.metadata.get("inline"):
                data.update(value)
            elif value is not None or not spec.metadata.get("omit_none"):
                data[spec.name] = value.to_json() if isinstance(value, _Record) else value
        return data

    @classmethod
    def from_json(cls, data: dict | None):
        if data is None:
            return None
        known = {spec.name for spec in fields(cls)}
        values = {}
        for spec in fields(cls):
            if spec.metadata.get("inline"):
                values[spec.name] = {key: value for key, value in data.items() if key not in known}
            elif "record" in spec.metadata:
                values[spec.name] = spec.metadata["record"].from_json(data.get(spec.name))
            else:
                values[spec.name] = data.get(spec.name)
        return cls(**values)


@dataclass
class ModelRecord(_Record):
    source: str | None = None  # what --model resolved to
    architecture: str | None = None
    task: str | None = None  # tasks.Task.name


@dataclass
class TokenizerRecord(_Record):
    family: str | None = None
    padding: None = None  # the bundle bakes in none (README, "What a bundle holds")
    truncation: None = None


@dataclass
class VocabRecord(_Record):
    original: int | None = None
    kept: int | None = None
    corpus_used: int | None = None
    min_count: int | None = None
    oov: str | None = None
    oov_choice: dict | None = None
    max_vocab: int | None = None
    max_bytes: int | None = None
    predicted_bytes: int | None = None
    prior: dict | None = None
    policies: dict = field(default_factory=dict, metadata=_INLINE)  # each OOV policy's entry under its key
    keep_tokens: int | None = None
    coverage: list | None = None


@dataclass
class ParamsRecord(_Record):
    original: int | None = None
    exported: int | None = None
    embedding_original: int | None = None
    embedding_exported: int | None = None


@dataclass
class CorpusRecord(_Record):
    files: list[str] | None = None
    texts: int | None = None
    tokens: int | None = None
    labelled: bool | None = None


@dataclass
class TrainingRecord(_Record):
    epochs: int | None = None
    train_size: int | None = None
    eval_size: int | None = None
    eval_source: str | None = None
    # the task metric's figures as eval_<figure>, and eval_<metric>_per_epoch (a classifier: eval_accuracy,
    # eval_accuracy_per_epoch; a token classifier: eval_entity_f1, ..._precision, ..._recall, ..._per_label)
    evaluation: dict = field(default_factory=dict, metadata=_INLINE)
    lr: float | None = None
    batch_size: int | None = None
    max_length: int | None = None
    seed: int | None = None
    device: str | None = None  # where it trained (cpu, cuda:0, ...); the model is exported and verified on the CPU
    device_reason: str | None = None  # what --device asked and, for auto, what was visible
    precision: str | None = None  # fp32, bf16, fp16 (autocast over fp32 weights); export and parity are fp32
    processes: int | None = None  # data-parallel processes of a launch; batch_size is the global batch
    oov_dropout: float | None = None
    oov_dropout_substitute: str | None = None
    labels: list[str] | None = None


@dataclass
class HeldOutRecord(_Record):
    file: str | None = None
    model: str | None = None  # the shipped model file that answered
    texts: int | None = None
    unk_rate: float | None = None
    remapped_rate: float | None = None
    accuracy: float | None = None  # a classifier's (the key every manifest has had; null for other tasks)
    figures: dict = field(default_factory=dict, metadata=_INLINE)  # another task metric's figures (entity_f1, ...)
    cosine_to_full: dict | None = field(default=None, metadata=_OMIT_NONE)  # encoders only
    nearest_neighbour_agreement: float | None = field(default=None, metadata=_OMIT_NONE)


@dataclass
class ParityRecord(_Record):
    texts_checked: int | None = None
    sample: str | None = None
    tokenization_texts_checked: int | None = None
    tokenization_mismatches: int | None = None
    texts_with_dropped_tokens: int | None = None
    max_abs_diff: float | None = None
    atol: float | None = None
    outputs: list[str] | None = None


def _section(record: type) -> dict:
    return {"default": None, "metadata": {"record": record}}


@dataclass
class Manifest(_Record):
    pema_export: str | None = None  # the version that wrote it
    model: ModelRecord | None = field(**_section(ModelRecord))
    target: dict | None = None  # profiles.Target.as_manifest()
    tokenizer: TokenizerRecord | None = field(**_section(TokenizerRecord))
    vocab: VocabRecord | None = field(**_section(VocabRecord))
    params: ParamsRecord | None = field(**_section(ParamsRecord))
    corpus: CorpusRecord | None = field(**_section(CorpusRecord))
    training: TrainingRecord | None = field(**_section(TrainingRecord))
    heldout: HeldOutRecord | None = field(**_section(HeldOutRecord))
    parity: ParityRecord | None = field(**_section(ParityRecord))
    stages: list[dict] | None = None  # one record per post-export stage, as the stage writes it
    embedding_bytes: dict[str, dict] | None = None
    mobile: dict | None = field(default=None, metadata=_OMIT_NONE)  # ORT formats: the mobile usability report
    string_input: dict | None = field(default=None, metadata=_OMIT_NONE)  # --tokenizer in-graph: plan and checks
    files: dict[str, dict] | None = None  # {name: {bytes, sha256}} of every other bundle file
    versions: dict[str, str | None] | None = None

    def model_file(self) -> str:
        """The first model file of the bundle (.onnx or .ort), by name."""
        return next(name for name in self.files if name.endswith((".onnx", ".ort")))

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
