"""Real runtimes on the real model: the embedded MiniLM as a sentence encoder for the sample search texts (one
export for the module, no training), shipped to the web and loaded by transformers.js in Node, and by Python
onnxruntime as .onnx and .ort.

The int8 bound for classifiers (top-1 agreement) is tested on hand-built graphs in test_targets.py; here the
encoder's int8 bound is mean cosine >= 0.99 with a 0.98 floor for the worst text (tasks.py says why)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from transformers import AutoConfig

from conftest import REPO, SAMPLES
from pema_export.bundle import MANIFEST_NAME, StagedBundle
from pema_export.pipeline import ExportOptions, run
from pema_export.profiles import load_target
from pema_export.stages import ModelShape, ship
from pema_export.tasks import TASKS
from pema_export.verify import onnx_reference
from pema_export.vocab import open_tokenizer

pytestmark = pytest.mark.slow

TRANSFORMERS_JS = REPO / "node_modules" / "@huggingface" / "transformers" / "package.json"


CORPUS = SAMPLES / "search_texts.txt"
OUTPUT = "sentence_embedding"


@pytest.fixture(scope="module")
def web_bundle(tmp_path_factory) -> tuple[Path, dict]:
    """MiniLM pruned to the search texts, pooled and normalised like sentence-transformers, for the web target.

    --oov fallback, not the default (auto takes the tail for this encoder): the tests below run this fp32 graph through
    the other targets' stages, which take the plain exported graph; remap bundles are tested in test_oov.py."""
    out = tmp_path_factory.mktemp("minilm-web") / "search-encoder" / "model.onnx"
    result = run(ExportOptions(corpus=[str(CORPUS)], out=str(out), target="web", oov="fallback"))
    return out.parent, result.manifest.to_json()


def _corpus() -> list[str]:
    return [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def _texts(n: int = 24) -> list[str]:
    """Corpus and held-out texts: accents, emoji, order ids, words the corpus never had."""
    lines = (SAMPLES / "app_texts.txt").read_text(encoding="utf-8").splitlines()[: n // 2]
    lines += (SAMPLES / "heldout.txt").read_text(encoding="utf-8").splitlines()[: n // 2]
    return [line.split("\t", 1)[1] for line in lines]


def _python_ids(bundle: Path, texts: list[str]) -> list[list[int]]:
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def _run_onnx(path: Path, ids: list[list[int]], output: str = OUTPUT) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    results = []
    for row in ids:
        feed = {"input_ids": np.array([row], np.int64), "attention_mask": np.ones((1, len(row)), np.int64)}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.zeros((1, len(row)), np.int64)
        results.append(session.run([output], feed)[0][0])
    return results


def _corpus_cosines(candidate: Path, fp32: Path, bundle: Path) -> np.ndarray:
    """Each corpus text's cosine similarity to fp32, each text alone, truncated as the export does."""
    ids = [row[:128] for row in _python_ids(bundle, _corpus())]
    got, want = _run_onnx(candidate, ids), _run_onnx(fp32, ids)
    return np.array([float(g @ w / (np.linalg.norm(g) * np.linalg.norm(w))) for g, w in zip(got, want)])


def test_transformers_js_loads_the_web_bundle_offline_fp32_and_q8_matching_onnxruntime(web_bundle, tmp_path):
    bundle, _ = web_bundle
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the web bundle is checked with transformers.js in Node 20")
    if not TRANSFORMERS_JS.is_file():
        pytest.fail(f"{TRANSFORMERS_JS.parent} is missing: run `make setup` (ONNXRUNTIME_NODE_INSTALL=skip npm ci)")
    texts = _texts()
    ids = _python_ids(bundle, texts)
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"folder": str(bundle), "texts": texts, "ids": ids, "dtypes": ["fp32", "q8"]}))
    # no network: transformers.js must find everything in the folder (allowRemoteModels=false in the script)
    done = subprocess.run([node, str(REPO / "tests" / "js" / "web_bundle.mjs"), str(request)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout)

    # the JavaScript tokenizer reads the pruned tokenizer.json exactly as Python does
    assert answer["ids"] == ids
    for dtype, model in (("fp32", "onnx/model.onnx"), ("q8", "onnx/model_quantized.onnx")):
        assert answer["outputs"][dtype]["name"] == OUTPUT
        js = [np.array(values, np.float32) for values in answer["outputs"][dtype]["values"]]
        python = _run_onnx(bundle / model, ids)
        assert max(float(np.abs(a - b).max()) for a, b in zip(js, python)) <= 1e-5, dtype
    # and q8 really is the other file: int8 moves the outputs
    fp32_js, q8_js = (np.array(answer["outputs"][d]["values"]) for d in ("fp32", "q8"))
    assert np.abs(fp32_js - q8_js).max() > 1e-4


def test_the_web_bundle_answers_as_its_manifest_says(web_bundle):
    bundle, manifest = web_bundle
    assert set(manifest["files"]) == {"config.json", "tokenizer.json", "tokenizer_config.json",
                                      "onnx/model.onnx", "onnx/model_quantized.onnx"}
    check = next(stage["check"] for stage in manifest["stages"] if stage["stage"] == "quantize int8")
    assert check["texts_checked"] == len(_corpus()) and check["bound"] == "mean_cosine >= 0.99 and min_cosine >= 0.98"
    recomputed = _corpus_cosines(bundle / "onnx/model_quantized.onnx", bundle / "onnx/model.onnx", bundle)
    assert recomputed.min() == pytest.approx(check["min_cosine"], abs=1e-6)
    assert recomputed.mean() == pytest.approx(check["mean_cosine"], abs=1e-6)
    assert recomputed.mean() >= 0.99 and recomputed.min() >= 0.98
    quantized = manifest["embedding_bytes"]["onnx/model_quantized.onnx"]
    assert quantized == {"dtype": "uint8", "bytes": manifest["vocab"]["kept"] * 384}
    assert manifest["embedding_bytes"]["onnx/model.onnx"]["bytes"] == 4 * quantized["bytes"]


@pytest.mark.parametrize("name, shipped", [("android", "model.ort"), ("cpu", "model.onnx")])
def test_the_trained_model_passes_every_stage_and_the_shipped_file_answers_as_recorded(web_bundle, tmp_path, name, shipped):
    """The stages the pipeline runs for android and cpu, on the same fp32 model, with onnxruntime loading the file
    each ships and reproducing the figure its check recorded."""
    bundle, manifest = web_bundle
    fp32 = bundle / "onnx" / "model.onnx"
    tokenizer = open_tokenizer(bundle / "tokenizer.json")
    tokenizer.enable_truncation(128)
    reference = onnx_reference(fp32, tokenizer, _corpus(), pad_id=0, bound=TASKS["feature-extraction"].quantized_bound)
    out = tmp_path / name / "model.onnx"
    with StagedBundle(out.parent) as staged, tempfile.TemporaryDirectory() as work:
        result = ship(load_target(name), fp32, ModelShape.from_config(AutoConfig.from_pretrained(bundle)), reference,
                      staged, out, Path(work))
        staged.commit()
    final = result.stages[-1]["check"]
    assert final["precision"] == "int8" and final["mean_cosine"] >= 0.99 and final["min_cosine"] >= 0.98
    assert _corpus_cosines(out.parent / shipped, fp32, bundle).min() == pytest.approx(final["min_cosine"], abs=1e-6)
    assert not (out.parent / MANIFEST_NAME).exists()  # ship() stages model files; the pipeline writes the manifest


def test_scan_predicts_the_web_bundle_within_half_a_percent_and_never_below(web_bundle, capsys):
    from pema_export.cli import main
    from pema_export.size import bundle_report

    bundle, manifest = web_bundle
    assert main(["scan", "--corpus", str(CORPUS), "--target", "web", "--oov", "fallback", "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    written = bundle_report(bundle).total_bytes
    assert predicted["vocab"]["kept"] == manifest["vocab"]["kept"]
    assert 0 <= (predicted["predicted_bytes"]["total"] - written) / written < 0.005


def test_sample_web_bundle_did_not_grow(web_bundle):
    from conftest import check_size_baseline

    bundle, _ = web_bundle
    check_size_baseline(bundle, "minilm-search_texts-web")
