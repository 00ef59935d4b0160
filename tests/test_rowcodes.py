"""Product-quantization codes for the rows outside the kept vocabulary, and the embedding that decodes them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pema_export.errors import ModelError
from pema_export.rowcodes import (
    CENTROIDS,
    TailEmbedding,
    build_tail_code,
    learn_product_quantizer,
    row_cosines,
)

# What the decoding may use: standard ONNX ops that onnxruntime CPU, ORT Mobile and onnxruntime-web all run.
STANDARD_OPS = {"Gather", "Cast", "Add", "Sub", "Reshape", "Where", "Less", "Clip", "Unsqueeze", "Flatten", "Shape",
                "Concat", "Slice", "Constant", "Mul", "Max", "Min", "Identity"}


def random_rows(count: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, width)).astype(np.float32)


def test_the_same_rows_and_seed_give_the_same_bytes_and_another_seed_does_not():
    rows = random_rows(1500, 32)
    first, again, other = (learn_product_quantizer(rows, 4, seed=seed) for seed in (0, 0, 1))
    assert first.codebook.tobytes() == again.codebook.tobytes()
    assert first.encode(rows).tobytes() == again.encode(rows).tobytes()
    assert first.codebook.tobytes() != other.codebook.tobytes()


def test_each_slice_is_coded_as_its_nearest_centroid():
    rows = random_rows(700, 24)
    quantizer = learn_product_quantizer(rows, 3, seed=0)
    codes = quantizer.encode(rows)
    for m in range(3):
        slices = rows[:, m * 8 : (m + 1) * 8]
        distances = ((slices[:, None, :] - quantizer.codebook[m][None]) ** 2).sum(axis=2)
        chosen = distances[np.arange(len(rows)), codes[:, m]]
        assert np.all(chosen <= distances.min(axis=1) + 1e-5)


def test_rows_with_fewer_distinct_slices_than_centroids_decode_exactly():
    # 40 distinct values per slice: k-means must give each its own centroid (duplicates among the starting
    # centroids leave some empty, and those are moved, not lost)
    rng = np.random.default_rng(3)
    palette = rng.standard_normal((4, 40, 8)).astype(np.float32)
    choice = rng.integers(0, 40, size=(2000, 4))
    rows = np.concatenate([palette[m][choice[:, m]] for m in range(4)], axis=1)
    quantizer = learn_product_quantizer(rows, 4, seed=0)
    # (a centroid is the mean of identical values: exact up to float rounding)
    np.testing.assert_allclose(quantizer.decode(quantizer.encode(rows)), rows, atol=1e-5)


def test_more_bytes_per_row_reconstruct_better():
    rows = random_rows(3000, 32)
    cosines = [row_cosines(q.decode(q.encode(rows)), rows).mean() for q in (learn_product_quantizer(rows, m) for m in (2, 4, 8))]
    assert cosines[0] < cosines[1] < cosines[2]


def test_the_tail_is_read_in_blocks_of_sorted_ids_and_reports_its_reconstruction():
    matrix = random_rows(900, 16)
    tail_ids = np.setdiff1d(np.arange(900), np.arange(0, 900, 3))
    reads = []

    def read_rows(ids):
        assert np.all(np.diff(ids) > 0)
        reads.append(len(ids))
        return matrix[ids]

    code = build_tail_code(read_rows, tail_ids, 4, seed=0)
    assert code.codes.shape == (len(tail_ids), 4) and code.codes.dtype == np.uint8
    assert max(reads) <= len(tail_ids)
    decoded = code.quantizer.decode(code.codes)
    assert code.cosine["mean"] == pytest.approx(float(row_cosines(decoded, matrix[tail_ids]).mean()), abs=1e-5)
    assert code.cosine["min"] <= code.cosine["p10"] <= code.cosine["mean"] < 1
    row_of = code.row_of(np.arange(0, 900, 3), 900)
    assert row_of[3] == 1 and row_of[tail_ids[0]] == 300 and sorted(row_of) == list(range(900))


def test_too_few_rows_for_a_codebook_is_one_clear_error():
    with pytest.raises(ModelError, match=f"at least {CENTROIDS} rows"):
        build_tail_code(lambda ids: random_rows(len(ids), 16), np.arange(CENTROIDS - 1), 4)


class _Embed(torch.nn.Module):
    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding

    def forward(self, input_ids):
        return self.embedding(input_ids)


def test_the_tail_embedding_runs_in_onnxruntime_with_standard_ops_as_in_torch(tmp_path):
    matrix = random_rows(1200, 32)
    kept_ids = np.arange(0, 1200, 4)
    tail_ids = np.setdiff1d(np.arange(1200), kept_ids)
    code = build_tail_code(lambda ids: matrix[ids], tail_ids, 8, seed=0)
    trained = torch.from_numpy(matrix[kept_ids] + 0.5)  # the kept rows as training left them
    embedding = TailEmbedding(trained, code.row_of(kept_ids, 1200), code.codes, code.quantizer)
    ids = torch.tensor([[0, 1, 4, 5, 1199, 8], [2, 3, 6, 7, 1196, 9]])
    with torch.no_grad():
        want = embedding(ids)
    # kept ids read their trained row exactly; tail ids their decoded pretrained row
    assert torch.equal(want[0, 0], trained[0]) and torch.equal(want[0, 2], trained[1])
    decoded = code.quantizer.decode(code.codes)
    np.testing.assert_array_equal(want[0, 1].numpy(), decoded[0])
    path = tmp_path / "tail.onnx"
    torch.onnx.export(_Embed(embedding), (ids,), str(path), input_names=["input_ids"], output_names=["embeddings"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}}, opset_version=18, dynamo=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops <= STANDARD_OPS, ops - STANDARD_OPS
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids.numpy()})[0]
    np.testing.assert_array_equal(got, want.numpy())
