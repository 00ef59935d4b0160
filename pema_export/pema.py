"""The partial embedding: a model whose input (and tied output) embedding holds only the kept rows.

The model is built with the small matrix before training starts, so the dropped rows never receive
gradients or optimizer state (Partial Embedding Matrix Adaptation, arXiv 2309.08708).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pema_export.errors import ModelError, OutputError
from pema_export.models import ModelSource, Pooling
from pema_export.tasks import Task, transformers_class
from pema_export.vocab import CONFIG_ID_FIELDS, KeptVocab


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def input_embedding(model: nn.Module) -> nn.Embedding:
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise ModelError(
            f"{type(model).__name__}: the input embedding is {type(embedding).__name__}, not torch.nn.Embedding; "
            "pema-export can only prune an nn.Embedding"
        )
    return embedding


def shrink_embeddings(model: nn.Module, kept: KeptVocab) -> nn.Module:
    """Replace the input embedding by its kept rows (and a tied output projection with it); renumber config ids."""
    old = input_embedding(model)
    if old.num_embeddings != kept.original_size:
        raise ModelError(
            f"the model has {old.num_embeddings} embedding rows but the tokenizer's vocabulary implies {kept.original_size}"
        )
    rows = torch.as_tensor(kept.kept_ids)
    padding_idx = kept.new_id(old.padding_idx) if old.padding_idx is not None else None
    new = nn.Embedding(len(rows), old.embedding_dim, padding_idx=padding_idx, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[rows])
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is old.weight
    model.set_input_embeddings(new)
    if tied:
        output.weight = new.weight
        if getattr(output, "bias", None) is not None:
            old_bias = output.bias
            output.bias = nn.Parameter(old_bias.detach()[rows].clone())
            # MLM heads hold the same bias under a second name (BertLMPredictionHead.bias) and re-point the
            # projection at it in tie_weights(); re-point that name too, or a later tie would restore the full bias.
            for module in model.modules():
                for name, parameter in list(module.named_parameters(recurse=False)):
                    if parameter is old_bias:
                        setattr(module, name, output.bias)
        output.out_features = len(rows)
    elif output is not None and output.weight.shape[0] == kept.original_size:
        raise ModelError(f"{type(model).__name__} has an untied output projection over the vocabulary; not supported")
    remap_config_ids(model.config, kept)
    return model


def remap_config_ids(config, kept: KeptVocab) -> None:
    """vocab_size and every special-token id in the config follow the new numbering."""
    config.vocab_size = kept.size
    for field in CONFIG_ID_FIELDS:
        value = getattr(config, field, None)
        if isinstance(value, int) and value >= 0:
            try:
                setattr(config, field, kept.new_id(value))
            except KeyError:
                raise ModelError(f"config.json {field}={value} is not among the kept tokens") from None


def original_numbering_config(config, kept: KeptVocab):
    """A copy of a pruned model's config in the original numbering (remap_config_ids undone): vocab_size and the
    special-token ids as the full model had them."""
    original = copy.deepcopy(config)
    original.vocab_size = kept.original_size
    for field in CONFIG_ID_FIELDS:
        value = getattr(original, field, None)
        if isinstance(value, int) and 0 <= value < kept.size:
            setattr(original, field, int(kept.kept_ids[value]))
    return original


def map_ids(kept: KeptVocab, ids: np.ndarray) -> np.ndarray:
    """Original ids -> new ids; a dropped id becomes the new UNK id (or fails if there is none)."""
    mapped = kept.id_map[ids]
    if (mapped < 0).any():
        if kept.unk_id is None:
            raise ModelError("a token outside the kept vocabulary has no UNK to map to")
        mapped = np.where(mapped < 0, kept.new_id(kept.unk_id), mapped)
    return mapped


@dataclass
class PartialModel:
    """A model whose embedding holds only the kept rows, plus what the manifest needs to know about the full one."""

    model: nn.Module
    task: Task
    pooling: Pooling | None
    original_params: int
    original_embedding_params: int

    @property
    def exported_params(self) -> int:
        return count_parameters(self.model)

    @property
    def exported_embedding_params(self) -> int:
        return input_embedding(self.model).weight.numel()


def load_partial_model(
    source: ModelSource, kept: KeptVocab, task: Task, labels: list[str] | None = None, trust_remote_code: bool = False,
    seed: int = 0,
) -> PartialModel:
    """Load the model for ``task`` (tasks.resolve_task) with only the kept embedding rows.

    With ``labels``, the task's head is over them (a fresh head, initialised from ``seed``, unless the checkpoint
    already has one of that size). A task that pools (an encoder) gets the folder's sentence-transformers pooling;
    one with vocabulary logits (fill-mask) keeps its output projection tied to the (pruned) input embedding.

    With safetensors weights the full embedding matrix never exists in memory: the architecture is built empty
    with ``vocab_size = kept.size`` and the word-embedding rows (and a tied output bias) are read as a slice.
    Only a checkpoint without safetensors (pytorch_model.bin) is loaded whole and then cut.
    """
    from transformers import AutoConfig

    auto = transformers_class(task.auto_class)
    kwargs = {"trust_remote_code": trust_remote_code}
    label_kwargs = {}
    if labels is not None:
        label_kwargs = dict(
            num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
        )
    checkpoint = find_safetensors(source.path)
    try:
        if checkpoint is None:
            model, original_params, original_embedding_params = _load_whole_then_shrink(
                auto, source, kept, label_kwargs, kwargs, seed
            )
        else:
            config = AutoConfig.from_pretrained(source.path, **label_kwargs, **kwargs)
            model, original_params, original_embedding_params = _build_sliced(auto, config, checkpoint, kept, seed, kwargs)
    except (ValueError, OSError) as exc:
        hint = "; pass --trust-remote-code if you trust it" if "custom code" in str(exc) and not trust_remote_code else ""
        raise ModelError(f"cannot load {source.name}: {str(exc).splitlines()[0]}{hint}") from None
    model.eval()
    if task.vocabulary_logits:
        _check_tied_head(model, kept, task)
    return PartialModel(model, task, source.pooling if task.pools else None, original_params, original_embedding_params)


def _check_tied_head(model: nn.Module, kept: KeptVocab, task: Task) -> None:
    # The logits must cover exactly the kept vocabulary, through the same (pruned) matrix as the input.
    output = model.get_output_embeddings()
    if output is None or output.weight is not input_embedding(model).weight:
        raise ModelError(f"{type(model).__name__} has no {task.head} tied to its input embedding; --task {task.name} needs one")
    if output.weight.shape[0] != kept.size or (getattr(output, "bias", None) is not None and output.bias.shape[0] != kept.size):
        raise ModelError(f"{type(model).__name__}: the {task.head} does not cover the {kept.size} kept tokens")


def pretrained_rows(source: ModelSource) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """(read_rows, row count) of the model's pretrained input-embedding matrix: ``read_rows(sorted ids)`` gives
    those rows as float32, read from safetensors at just those rows, so the whole matrix need never be in memory.
    A checkpoint without safetensors is loaded whole once."""
    rows = source.read_config().get("vocab_size")
    checkpoint = find_safetensors(source.path)
    if checkpoint is not None:
        candidates = sorted(
            name for name, shape in checkpoint.shapes.items()
            if len(shape) == 2 and shape[0] == rows and ("word_embeddings" in name or "embed_tokens" in name or "shared" in name)
        )
        if candidates:
            return (lambda ids: checkpoint.read(candidates[0], np.asarray(ids)).float().numpy()), rows
    from transformers import AutoModel

    embedding = AutoModel.from_pretrained(source.path).get_input_embeddings()
    if embedding is None or embedding.weight.shape[0] != rows:
        raise ModelError(f"{source.name}: cannot find its input embedding")
    matrix = embedding.weight.detach().float().numpy()
    return (lambda ids: matrix[np.asarray(ids)]), rows


SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class StoredTensor:
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # of the first byte, from the start of the file


@dataclass(frozen=True)
class Checkpoint:
    """Every tensor of a safetensors checkpoint: file, dtype, shape and byte offset, from the headers (no data)."""

    tensors: dict[str, StoredTensor]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: stored.shape for name, stored in self.tensors.items()}

    def read(self, name: str, rows: np.ndarray | None = None) -> torch.Tensor:
        """The tensor, or only its ``rows`` (sorted first-axis indices), with positioned reads.

        Not through a memory map (safetensors' get_slice): the kernel maps neighbouring pages around each
        touched row into the process, so reading scattered rows put most of the full matrix into RSS.
        """
        stored = self.tensors[name]
        row_shape = stored.shape[1:]
        row_bytes = math.prod(row_shape) * stored.dtype.itemsize
        if rows is None:
            rows = np.arange(stored.shape[0] if stored.shape else 1)  # a scalar is one row of one element
        # torch.empty gives aligned memory (a bytearray would not), which the CPU kernels run faster on.
        tensor = torch.empty((len(rows), *row_shape) if stored.shape else (), dtype=stored.dtype)
        if tensor.numel() == 0:
            return tensor
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        # Consecutive rows form one run and one read.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        with open(stored.path, "rb", buffering=0) as handle:
            for run in np.split(np.arange(len(rows)), breaks):
                first, count = int(run[0]), len(run)
                _read_exactly(handle.fileno(), view[first * row_bytes : (first + count) * row_bytes],
                              stored.offset + int(rows[first]) * row_bytes)
        return tensor


def _read_exactly(fd: int, view: memoryview, offset: int) -> None:
    while view:
        read = os.preadv(fd, [view], offset)
        if read == 0:
            raise ModelError(f"checkpoint file is truncated (reading at byte {offset})")
        view, offset = view[read:], offset + read


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def find_safetensors(folder: Path) -> Checkpoint | None:
    """The folder's safetensors weights, single-file or sharded; None when it has none."""
    index = folder / SAFETENSORS_INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        paths = sorted({folder / name for name in weight_map.values()})
    elif (folder / SAFETENSORS_NAME).is_file():
        paths = [folder / SAFETENSORS_NAME]
    else:
        return None
    tensors = {}
    for path in paths:
        if not path.is_file():
            raise ModelError(f"{index.name} names {path.name}, which is missing from {folder}")
        # The safetensors layout: an 8-byte little-endian header length, a JSON header, then the data.
        with path.open("rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            try:
                header = json.loads(handle.read(header_size))
            except ValueError:
                raise ModelError(f"{path} is not a safetensors file") from None
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            if entry["dtype"] not in SAFETENSORS_DTYPES:
                raise ModelError(f"{path.name}: tensor {name} has dtype {entry['dtype']}, which pema-export cannot read")
            tensors[name] = StoredTensor(
                path, SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + header_size + entry["data_offsets"][0]
            )
    return Checkpoint(tensors)


def _canonical(name: str, prefix: str) -> str:
    # Base-model weights are stored with the head model's prefix ("bert.") or without it (a BertModel or a
    # sentence-transformers folder); old BERT checkpoints call LayerNorm parameters gamma/beta.
    name = name.removeprefix(prefix + ".")
    for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
        if "LayerNorm" in name and name.endswith(old):
            name = name[: -len(old)] + new
    return name


def _distinct_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by name, a tied tensor only under its first name."""
    seen, state = set(), {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            state[name] = tensor
    return state


def _is_vocab_rows(stored: tuple[int, ...], wanted: tuple[int, ...], kept: KeptVocab) -> bool:
    return stored[0] == kept.original_size and wanted[0] == kept.size and stored[1:] == wanted[1:]


def _build_sliced(auto, config, checkpoint: Checkpoint, kept: KeptVocab, seed: int, kwargs: dict):
    """Build the model without memory, then read each tensor it needs; vocabulary tensors only at the kept rows."""
    from transformers.integrations.accelerate import init_empty_weights

    original_pad = config.pad_token_id
    remap_config_ids(config, kept)
    with init_empty_weights():  # parameters on the meta device; buffers (position ids) stay real
        model = auto.from_config(config, **kwargs)
    # Tie before loading, so each tied tensor is read once under the name the checkpoint stores it by; tying only
    # afterwards lets RobertaLMHead keep a freshly initialised decoder bias instead of the stored lm_head.bias.
    model.tie_weights()
    embeddings = getattr(model.base_model, "embeddings", None)
    if getattr(embeddings, "padding_idx", None) is not None and original_pad != config.pad_token_id:
        # RoBERTa-style embeddings count positions from the pad id; renumbering it would shift every position.
        raise ModelError(f"{type(model).__name__}: the pad id {original_pad} would become {config.pad_token_id}; not supported")
    embedding_param = input_embedding(model).weight
    prefix = model.base_model_prefix
    stored_by_canonical = {_canonical(name, prefix): name for name in checkpoint.shapes}
    in_base = model.base_model is model
    plan: dict[str, tuple[str, bool]] = {}  # model name -> (stored name, read only the kept rows)
    fresh: list[str] = []
    original_params = 0
    original_embedding_params = None
    targets = _distinct_state(model)
    # A tied tensor may be stored under any of its names (RobertaLMHead: "lm_head.bias", not "lm_head.decoder.bias").
    aliases: dict[int, list[str]] = {}
    for alias, tensor in model.state_dict(keep_vars=True).items():
        aliases.setdefault(id(tensor), []).append(_canonical(alias, prefix))
    for name, tensor in targets.items():
        stored = next((stored_by_canonical[a] for a in aliases[id(tensor)] if a in stored_by_canonical), None)
        wanted = tuple(tensor.shape)
        is_embedding = tensor is embedding_param
        shape = checkpoint.shapes.get(stored) if stored else None
        if is_embedding and (shape is None or shape[0] != kept.original_size):
            raise ModelError(
                f"the model has {shape[0] if shape else 'no'} embedding rows but the tokenizer's vocabulary implies {kept.original_size}"
            )
        if shape == wanted:
            plan[name] = (stored, False)
        elif shape is not None and _is_vocab_rows(shape, wanted, kept):
            plan[name] = (stored, True)
        elif (in_base or name.startswith(prefix + ".")) and not _canonical(name, prefix).startswith("pooler."):
            # A missing or mis-shaped encoder weight would silently train a random model.
            found = f"shape {list(shape)}" if shape else "nothing"
            raise ModelError(f"the checkpoint has {found} for {name}, the model needs {list(wanted)}")
        else:
            fresh.append(name)  # a new head (or pooler), initialised below
        if isinstance(tensor, nn.Parameter):
            original_params += math.prod(shape) if name in plan else tensor.numel()
        if is_embedding:
            original_embedding_params = math.prod(shape)
    state = {
        name: checkpoint.read(stored, kept.kept_ids if sliced else None).to(targets[name].dtype)  # fp16 files train in fp32
        for name, (stored, sliced) in plan.items()
    }
    model.load_state_dict(state, strict=False, assign=True)
    _initialise_fresh(model, fresh, seed)
    model.tie_weights()
    on_meta = [name for name, tensor in model.state_dict(keep_vars=True).items() if tensor.is_meta]
    if on_meta:
        raise ModelError(f"{type(model).__name__}: no weights for {', '.join(on_meta[:3])}")
    return model, original_params, original_embedding_params


def _initialise_fresh(model: nn.Module, names: list[str], seed: int) -> None:
    """Materialise and initialise the parameters the checkpoint lacks, from ``seed`` alone, so a run is repeatable."""
    owners = sorted({name.rpartition(".")[0] for name in names})
    for name in names:
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        tensor = getattr(owner, attr)
        if tensor.is_meta:
            materialised = torch.empty(tensor.shape, dtype=tensor.dtype)
            if isinstance(tensor, nn.Parameter):
                owner.register_parameter(attr, nn.Parameter(materialised, requires_grad=tensor.requires_grad))
            else:
                owner.register_buffer(attr, materialised)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for owner_name in owners:
            model._init_weights(model.get_submodule(owner_name))


def _load_whole_then_shrink(auto, source: ModelSource, kept: KeptVocab, label_kwargs: dict, kwargs: dict, seed: int):
    # No safetensors file (pytorch_model.bin cannot be read by slice): load everything, then cut the rows.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_pretrained(source.path, ignore_mismatched_sizes=bool(label_kwargs), **label_kwargs, **kwargs)
    original_params = count_parameters(model)
    original_embedding_params = input_embedding(model).weight.numel()
    shrink_embeddings(model, kept)
    return model, original_params, original_embedding_params


# Files that make a Hugging Face folder usable with its original tokenizer (and as a sentence-transformers model).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling",
)


def check_save_full_dir(out_dir: Path) -> None:
    """Fail before any work when ``--save-full`` names a file or a folder that already has files."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputError(f"--save-full {out_dir}: already exists and is not an empty folder")


def save_full_model(model: nn.Module, kept: KeptVocab, source: ModelSource, out_dir: Path) -> Path:
    """Write a normal Hugging Face checkpoint with the full vocabulary to ``out_dir``, atomically.

    The trained kept rows are written over the pretrained matrix, read again from the checkpoint; every other
    row keeps its pretrained value, as full fine-tuning without weight decay on the embedding would leave it.
    The original tokenizer files are copied beside it. ``out_dir`` appears complete or not at all.
    """
    from transformers.integrations.accelerate import init_empty_weights

    out_dir = Path(out_dir)
    check_save_full_dir(out_dir)
    full_config = original_numbering_config(model.config, kept)
    with init_empty_weights():
        full = type(model)(full_config)
    wanted = _distinct_state(full)
    state = {}
    for name, tensor in _distinct_state(model).items():
        if tuple(wanted[name].shape) == tuple(tensor.shape):
            state[name] = tensor.detach().cpu()
        else:
            merged = _read_pretrained(source, name, full.base_model_prefix, tuple(wanted[name].shape)).to(tensor.dtype)
            merged[torch.as_tensor(kept.kept_ids)] = tensor.detach().cpu()
            state[name] = merged
    full.load_state_dict(state, strict=False, assign=True)
    full.tie_weights()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        full.save_pretrained(staging, safe_serialization=True)
        for name in TOKENIZER_FILES:
            path = source.path / name
            if path.is_dir():
                shutil.copytree(path, staging / name)
            elif path.is_file():
                shutil.copy2(path, staging / name)
        if out_dir.exists():
            out_dir.rmdir()  # an empty folder, checked above
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _read_pretrained(source: ModelSource, name: str, prefix: str, shape: tuple[int, ...]) -> torch.Tensor:
    """One pretrained tensor of the checkpoint, whole (to merge trained rows into)."""
    checkpoint = find_safetensors(source.path)
    if checkpoint is not None:
        stored = {_canonical(key, prefix): key for key in checkpoint.shapes}.get(_canonical(name, prefix))
        if stored is not None and checkpoint.shapes[stored] == shape:
            return checkpoint.read(stored)
    else:
        weights = source.path / "pytorch_model.bin"
        if weights.is_file():
            state = torch.load(weights, map_location="cpu", weights_only=True)
            stored = {_canonical(key, prefix): key for key in state}.get(_canonical(name, prefix))
            if stored is not None and tuple(state[stored].shape) == shape:
                return state[stored]
    raise ModelError(f"cannot merge back {name}: {source.name} has no pretrained tensor of shape {list(shape)}")
