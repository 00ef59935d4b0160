"""Compact codes for embedding rows: product quantization learned from the pretrained matrix itself.

The rows an app's corpus never uses are never trained (PEMA leaves them pretrained), so they can ship as a code of
their pretrained value at no cost to training. A product quantizer splits each ``d``-wide row into ``sub_vectors``
slices and stores, per slice, the index (one byte) of the nearest of 256 centroids learned by k-means on that
slice of the rows themselves. A row then costs ``sub_vectors`` bytes instead of ``4 d``; the codebook costs
``256 d`` floats once.

Everything is seeded and runs in a fixed order, so the same matrix and seed give the same bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pema_export.errors import ModelError

CENTROIDS = 256  # one byte per sub-vector
# k-means on a seeded sample of the rows, then every row is encoded. benchmarks/tail_codes.py, all-MiniLM-L6-v2's
# 29,907 tail rows for samples/search_texts.txt (output: benchmarks/tail_codes_last.txt), mean row cosine of the
# codes by (rows per centroid, iterations):
#   16-value slices (24 bytes a row): 64/8 0.6917, 64/12 0.6930, 128/12 0.6995, 256/20 0.7012
#    4-value slices (96 bytes a row): 64/8 0.9493, 64/12 0.9497, 128/12 0.9506, 256/20 0.9510
# Wide slices take 128 rows per centroid and 12 iterations; narrow ones (a centroid of 4 values needs fewer points to
# place) 64 and 8, a third of the learning work, which is what an encoder's many slices spend their time on.
KMEANS_ITERATIONS = 12
KMEANS_SAMPLE = 128 * CENTROIDS
NARROW_SLICE_WIDTH = 4  # slices this wide or narrower take the NARROW_ schedule
NARROW_KMEANS_ITERATIONS = 8
NARROW_KMEANS_SAMPLE = 64 * CENTROIDS
_CHUNK_ROWS = 16_384  # rows encoded per step
_DISTANCE_BLOCK = 512  # points per distance block (measured fastest of 170-2048 on this machine)


@dataclass(frozen=True)
class ProductQuantizer:
    """``codebook[m, c]`` is centroid ``c`` of slice ``m``; a row's code holds one centroid index per slice."""

    codebook: np.ndarray  # float32 [sub_vectors, CENTROIDS, width]

    @property
    def sub_vectors(self) -> int:
        return self.codebook.shape[0]

    @property
    def width(self) -> int:
        return self.codebook.shape[2]

    @property
    def dim(self) -> int:
        return self.sub_vectors * self.width

    def encode(self, rows: np.ndarray) -> np.ndarray:
        """uint8 [n, sub_vectors]: the nearest centroid of each slice of each row."""
        rows = _as_matrix(rows, self.dim)
        codebook = torch.from_numpy(self.codebook)
        codes = np.empty((len(rows), self.sub_vectors), dtype=np.uint8)
        for start in range(0, len(rows), _CHUNK_ROWS):
            block = _slices(torch.from_numpy(rows[start : start + _CHUNK_ROWS]), self.sub_vectors)
            codes[start : start + block.shape[1]] = _nearest(block, codebook).T.numpy()
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """float32 [n, dim]: each slice replaced by its centroid."""
        codes = np.asarray(codes)
        gathered = self.codebook[np.arange(self.sub_vectors)[None, :], codes.astype(np.int64)]  # [n, M, width]
        return gathered.reshape(len(codes), self.dim).astype(np.float32)


@dataclass(frozen=True)
class TailCode:
    """The rows outside the kept vocabulary (``tail_ids``, original numbering) as product-quantization codes of
    their pretrained values, and how well the codes reconstruct them."""

    tail_ids: np.ndarray  # int64, sorted
    codes: np.ndarray  # uint8 [len(tail_ids), sub_vectors]
    quantizer: ProductQuantizer
    cosine: dict[str, float]  # reconstruction cosine to the pretrained rows: mean, min, p10
    seconds: float

    def row_of(self, kept_ids: np.ndarray, original_size: int) -> np.ndarray:
        """Per original id: its kept row (0..kept-1), or kept + its index among the tail rows."""
        row_of = np.full(original_size, -1, dtype=np.int64)
        row_of[kept_ids] = np.arange(len(kept_ids))
        row_of[self.tail_ids] = len(kept_ids) + np.arange(len(self.tail_ids))
        if (row_of < 0).any():
            raise ModelError(f"{int((row_of < 0).sum())} ids are neither kept nor in the tail code")
        return row_of


def build_tail_code(read_rows: Callable[[np.ndarray], np.ndarray], tail_ids: np.ndarray, sub_vectors: int, *,
                    seed: int = 0) -> TailCode:
    """Learn a product quantizer from a seeded sample of the tail rows and encode every tail row.

    ``read_rows(ids)`` returns the pretrained rows of sorted original ids; rows are read in blocks, so the whole
    matrix never has to be in memory at once."""
    started = time.perf_counter()
    tail_ids = np.asarray(tail_ids, dtype=np.int64)
    if len(tail_ids) < CENTROIDS:
        raise ModelError(
            f"a compressed tail needs at least {CENTROIDS} rows outside the kept vocabulary to learn its codebook "
            f"from; this vocabulary leaves {len(tail_ids)} (use --oov unk or --oov remap)"
        )
    rng = np.random.default_rng(seed)
    sample = tail_ids[np.sort(rng.choice(len(tail_ids), size=min(KMEANS_SAMPLE, len(tail_ids)), replace=False))]
    sampled = _as_matrix(read_rows(sample))
    iterations, learn_on = kmeans_schedule(sampled.shape[1] // sub_vectors)  # narrow slices learn on part of it
    quantizer = learn_product_quantizer(sampled, sub_vectors, seed=seed, iterations=iterations, sample=learn_on)
    codes = np.empty((len(tail_ids), sub_vectors), dtype=np.uint8)
    cosines = np.empty(len(tail_ids), dtype=np.float32)
    for start in range(0, len(tail_ids), _CHUNK_ROWS):
        rows = _as_matrix(read_rows(tail_ids[start : start + _CHUNK_ROWS]), quantizer.dim)
        block = quantizer.encode(rows)
        codes[start : start + len(block)] = block
        cosines[start : start + len(block)] = row_cosines(quantizer.decode(block), rows)
    cosine = {"mean": float(cosines.mean()), "min": float(cosines.min()), "p10": float(np.percentile(cosines, 10))}
    return TailCode(tail_ids, codes, quantizer, cosine, time.perf_counter() - started)


def kmeans_schedule(slice_width: int) -> tuple[int, int]:
    """(Lloyd iterations, rows sampled) for slices ``slice_width`` values wide (the constants above say why)."""
    if slice_width <= NARROW_SLICE_WIDTH:
        return NARROW_KMEANS_ITERATIONS, NARROW_KMEANS_SAMPLE
    return KMEANS_ITERATIONS, KMEANS_SAMPLE


def learn_product_quantizer(
    rows: np.ndarray,
    sub_vectors: int,
    *,
    seed: int = 0,
    iterations: int = KMEANS_ITERATIONS,
    sample: int = KMEANS_SAMPLE,
) -> ProductQuantizer:
    """k-means (``CENTROIDS`` centroids) on each slice of a seeded sample of ``rows``.

    Initial centroids are distinct sampled rows; a centroid that loses all its rows is moved to the row farthest
    from its own centroid, so every code is used."""
    rows = _as_matrix(rows)
    count, dim = rows.shape
    if dim % sub_vectors:
        raise ModelError(f"the embedding width {dim} does not split into {sub_vectors} equal slices")
    if count < CENTROIDS:
        raise ModelError(
            f"a product-quantized tail needs at least {CENTROIDS} rows to learn its codebook from; only {count} rows "
            "are outside the kept vocabulary (keep them all with --oov unk, or use --oov remap)"
        )
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(count, size=min(sample, count), replace=False))
    points = _slices(torch.from_numpy(rows[picked]), sub_vectors)  # [sub_vectors, n, width]
    # each slice starts from its own seeded choice of distinct sampled rows
    starts = torch.from_numpy(np.stack([np.sort(rng.choice(len(picked), size=CENTROIDS, replace=False)) for _ in range(sub_vectors)]))
    centroids = torch.gather(points, 1, starts[:, :, None].expand(-1, -1, points.shape[2])).clone()
    for _ in range(iterations):
        centroids = _kmeans_step(points, centroids)
    return ProductQuantizer(codebook=centroids.numpy())


def _slices(rows: torch.Tensor, sub_vectors: int) -> torch.Tensor:
    """[n, dim] -> [sub_vectors, n, dim / sub_vectors], contiguous per slice."""
    return rows.reshape(len(rows), sub_vectors, -1).transpose(0, 1).contiguous()


def _kmeans_step(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """One Lloyd iteration on every slice at once; a centroid that lost all its points moves to the point farthest
    from its own centroid, so every code stays in use."""
    sub_vectors, count, width = points.shape
    assignment = _nearest(points, centroids)  # [sub_vectors, n]
    flat = (assignment + torch.arange(sub_vectors)[:, None] * CENTROIDS).flatten()
    sums = torch.zeros(sub_vectors * CENTROIDS, width).index_add_(0, flat, points.reshape(-1, width))
    sizes = torch.bincount(flat, minlength=sub_vectors * CENTROIDS).reshape(sub_vectors, CENTROIDS)
    updated = torch.where(sizes[..., None] > 0, sums.reshape(sub_vectors, CENTROIDS, width) / sizes.clamp(min=1)[..., None], centroids)
    for m in torch.nonzero((sizes == 0).any(dim=1)).flatten().tolist():
        empty = torch.nonzero(sizes[m] == 0).flatten()
        error = (points[m] - updated[m][assignment[m]]).pow(2).sum(dim=1)
        updated[m, empty] = points[m, torch.argsort(error, descending=True, stable=True)[: len(empty)]]
    return updated


def _nearest(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """[sub_vectors, n] index of the nearest centroid of each slice of each point (squared L2; ties to the lower
    index). Distances are laid out [sub_vectors, centroid, point], so the argmin runs across contiguous points
    (2.7x faster than reducing over the last axis), in blocks that keep them in cache."""
    sub_vectors, count, _ = points.shape
    best = torch.empty(sub_vectors, count, dtype=torch.int64)
    squared = centroids.pow(2).sum(dim=2)[:, :, None]  # [sub_vectors, CENTROIDS, 1]
    for start in range(0, count, _DISTANCE_BLOCK):
        block = points[:, start : start + _DISTANCE_BLOCK].transpose(1, 2)  # [sub_vectors, width, block]
        best[:, start : start + block.shape[2]] = torch.baddbmm(squared, centroids, block, alpha=-2).argmin(dim=1)
    return best


def _as_matrix(rows: np.ndarray, dim: int | None = None) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim != 2 or (dim is not None and rows.shape[1] != dim):
        raise ModelError(f"expected a matrix of width {dim}, got shape {rows.shape}")
    return rows


def int4_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 per row (for comparison): values in [-7, 7] and one fp32 scale per row."""
    rows = _as_matrix(rows)
    scale = np.maximum(np.abs(rows).max(axis=1, keepdims=True) / 7.0, 1e-12).astype(np.float32)
    return np.clip(np.round(rows / scale), -7, 7).astype(np.int8), scale[:, 0]


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine between two matrices of the same shape."""
    dot = (a * b).sum(axis=1)
    return dot / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


class TailEmbedding(torch.nn.Module):
    """An input embedding over the ORIGINAL ids: exact (trainable) rows for the kept ids, product-quantized
    pretrained rows for every other id, decoded on the fly with Gather, Cast, Add, Reshape and Where only.

    ``row_of[id]`` is the id's kept row (< kept) or ``kept + its tail index``."""

    def __init__(self, exact: torch.Tensor, row_of: np.ndarray, codes: np.ndarray, quantizer: ProductQuantizer):
        super().__init__()
        self.weight = torch.nn.Parameter(exact)  # the kept rows: what training trained and a tied head reads
        self.kept = exact.shape[0]
        # int32, not int16 even where the ids fit: onnxruntime-web's browser build (the .asyncify.wasm transformers.js
        # loads) has no Cast from int16 and refuses the session; Cast from int32 and uint8 run (checked in Chromium)
        self.register_buffer("row_of", torch.as_tensor(row_of).to(torch.int32))
        self.register_buffer("codes", torch.from_numpy(np.ascontiguousarray(codes, dtype=np.uint8)))
        sub_vectors, centroids, width = quantizer.codebook.shape
        self.register_buffer("codebook", torch.from_numpy(quantizer.codebook.reshape(sub_vectors * centroids, width).copy()))
        self.register_buffer("offsets", torch.arange(sub_vectors, dtype=torch.int64) * centroids)
        self.embedding_dim = exact.shape[1]
        self.num_embeddings = len(row_of)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        row = self.row_of[input_ids].to(torch.int64)
        is_exact = row < self.kept
        exact = self.weight[row.clamp(max=self.kept - 1)]
        codes = self.codes[(row - self.kept).clamp(min=0)].to(torch.int64) + self.offsets  # [..., sub_vectors]
        decoded = self.codebook[codes].flatten(start_dim=-2)  # [..., dim]
        return torch.where(is_exact.unsqueeze(-1), exact, decoded)


# What a token the head does not cover scores: far below any real logit, finite so fp16 and int8 stay finite.
UNCOVERED_LOGIT = -1.0e4


class OriginalIdLogits(torch.nn.Module):
    """A masked-LM output projection over the kept rows whose logits come out in the ORIGINAL numbering: column
    ``id`` is the kept row's logit, or UNCOVERED_LOGIT for an id the head does not cover (a tail token is read
    through its code but never predicted). The projection itself (weight tied to the kept input rows, bias) is
    unchanged."""

    def __init__(self, projection: torch.nn.Linear, column_of: np.ndarray):
        super().__init__()
        self.projection = projection
        self.register_buffer("column_of", torch.as_tensor(column_of, dtype=torch.int64))

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.projection.weight

    @property
    def bias(self) -> torch.nn.Parameter | None:
        return self.projection.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.pad(self.projection(hidden), (0, 1), value=UNCOVERED_LOGIT)
        return logits.index_select(-1, self.column_of)


def install_tail(model: torch.nn.Module, code: TailCode, kept_ids: np.ndarray, original_size: int) -> torch.nn.Module:
    """Make ``model`` (trained with only the kept rows) take original ids: its input embedding becomes a
    TailEmbedding over its own trained rows and ``code``; a tied masked-LM head answers in original ids too."""
    embedding = model.get_input_embeddings()
    row_of = code.row_of(kept_ids, original_size)
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding.weight
    tail = TailEmbedding(embedding.weight.detach(), row_of, code.codes, code.quantizer)
    model.set_input_embeddings(tail)
    if tied:
        output.weight = tail.weight
        column_of = np.where(row_of < len(kept_ids), row_of, len(kept_ids))
        _replace_module(model, output, OriginalIdLogits(output, column_of))
    return model


def _replace_module(model: torch.nn.Module, old: torch.nn.Module, new: torch.nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ModelError(f"{type(model).__name__}: cannot find its output projection to wrap")
