"""The partial embedding: a model whose input (and tied output) embedding holds only the kept rows.

The model is built with the small matrix before training starts, so the dropped rows never receive
gradients or optimizer state (Partial Embedding Matrix Adaptation, arXiv 2309.08708).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pema_export.errors import ModelError
from pema_export.models import ModelSource, Pooling
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
            output.bias = nn.Parameter(output.bias.detach()[rows].clone())
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
    task: str  # the optimum export task
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
    source: ModelSource, kept: KeptVocab, labels: list[str] | None, trust_remote_code: bool = False
) -> PartialModel:
    """Load the model for its job and cut its embedding to the kept rows.

    Labelled corpus: a sequence classifier over ``labels`` (a fresh head unless the checkpoint already has one
    of that size). Unlabelled: the model as it is: a classifier checkpoint stays one; anything else is a
    feature extractor, with its sentence-transformers pooling when the folder has one.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    config = source.read_config()
    is_classifier = any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or [])
    kwargs = {"trust_remote_code": trust_remote_code}
    try:
        if labels is not None:
            model = AutoModelForSequenceClassification.from_pretrained(
                source.path,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                ignore_mismatched_sizes=True,
                **kwargs,
            )
            task, pooling = "text-classification", None
        elif is_classifier:
            model = AutoModelForSequenceClassification.from_pretrained(source.path, **kwargs)
            task, pooling = "text-classification", None
        else:
            model = AutoModel.from_pretrained(source.path, **kwargs)
            task, pooling = "feature-extraction", source.pooling
    except ValueError as exc:
        raise ModelError(f"cannot load {source.name}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ModelError(f"cannot load {source.name}: {str(exc).splitlines()[0]}") from None
    model.eval()
    original_params = count_parameters(model)
    original_embedding_params = input_embedding(model).weight.numel()
    shrink_embeddings(model, kept)
    return PartialModel(model, task, pooling, original_params, original_embedding_params)
