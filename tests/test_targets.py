"""Target profiles and the bundles they produce, on tiny models (the real MiniLM runs are in test_targets_minilm.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import sample_head
from pema_export.stages import quantize as quantize_module
from pema_export.bundle import MANIFEST_NAME
from pema_export.cli import main
from pema_export.errors import TargetError, VerificationError
from pema_export.pipeline import ExportOptions, run
from pema_export.pooling import POOL_NODE_PREFIX
from pema_export.profiles import builtin_targets, load_target
from pema_export.tasks import TASKS
from pema_export.timings import TIMINGS_NAME
from pema_export.verify import OnnxReference, check_stage

EXPECTED_FILES = {
    "cpu": {"model.onnx"},
    "android": {"model.ort", "required_operators_and_types.config"},
    "ios": {"model.ort", "required_operators_and_types.config"},
    "web": {"onnx/model.onnx", "onnx/model_quantized.onnx"},
}
COMMON_FILES = {"config.json", "tokenizer.json", "tokenizer_config.json"}
CLASSIFIER, ENCODER = TASKS["text-classification"], TASKS["feature-extraction"]


@pytest.fixture(scope="module")
def search_corpus(tmp_path_factory) -> Path:
    """Unlabelled app texts: the tiny model stays a feature extractor, checked by cosine."""
    return sample_head(tmp_path_factory.mktemp("corpus"), "search_texts.txt", 80, name="search.txt")


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory, tiny_bert, search_corpus) -> dict[str, Path]:
    """One bundle per built-in target from the same tiny BERT and corpus."""
    bundles = {}
    for name in sorted(EXPECTED_FILES):
        out = tmp_path_factory.mktemp(f"bundle-{name}") / "app" / "model.onnx"
        run(ExportOptions(corpus=[str(search_corpus)], out=str(out), model=str(tiny_bert), target=name))
        bundles[name] = out.parent
    return bundles


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))


def _listing(bundle: Path) -> set[str]:
    return {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}


# --- Profiles and the errors a user can cause -------------------------------------------------------------------


def test_targets_command_lists_each_builtin_profile_on_one_line(capsys):
    assert main(["targets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["android", "cpu", "ios", "web"]
    assert all(len(line.split()) > 3 for line in lines)  # a description follows each name


def test_builtin_profiles_say_what_each_target_ships():
    cpu, android, ios, web = (load_target(name) for name in ("cpu", "android", "ios", "web"))
    assert (cpu.format, cpu.optimize, cpu.quantize) == ("onnx", True, "int8")
    assert (android.format, android.quantize, android.ort_target_platform, android.ort_optimization_style) == (
        "ort", "int8", "arm", "Fixed")
    assert ios.format == "ort" and ios.guidance == ("coreml",)
    assert (web.format, web.optimize, web.quantize) == ("transformers.js", False, "int8")
    assert set(builtin_targets()) == {"cpu", "android", "ios", "web"}


@pytest.mark.parametrize(
    "profile, named",
    [
        ('name = "x"\nquantise = "int8"\n', "'quantise'"),
        ('name = "x"\nopset = "18"\n', "opset"),
        ('name = "x"\nopset = true\n', "opset"),
        ('name = "x"\noptimize = "yes"\n', "optimize"),
        ('name = "x"\nquantize = "int4"\n', "quantize"),
        ('name = "x"\nquantize_allowed = ["none", "bf16"]\n', "quantize_allowed"),
        ('name = "x"\nquantize = "fp16"\nquantize_allowed = ["none", "int8"]\n', "quantize"),
        ('name = "x"\nformat = "onnx"\nort_target_platform = "arm"\n', "ort_target_platform"),
        ('name = "x"\nformat = "ort"\nort_optimization_style = "Eager"\n', "ort_optimization_style"),
        ('description = "no name"\n', "'name'"),
        ('name = "x"\nopset = \n', "not valid TOML"),
    ],
)
def test_a_malformed_profile_is_one_line_naming_the_key_before_any_work(tmp_path, search_corpus, capsys, profile, named):
    path = tmp_path / "mine.toml"
    path.write_text(profile, encoding="utf-8")
    out = tmp_path / "never" / "model.onnx"
    code = main(["--corpus", str(search_corpus), "--out", str(out), "--target", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and named in err and str(path) in err
    assert not out.parent.exists()


def test_a_user_profile_is_loaded_from_its_path(tmp_path):
    path = tmp_path / "kiosk.toml"
    path.write_text('name = "kiosk"\nformat = "onnx"\noptimize = false\nquantize = "fp16"\n', encoding="utf-8")
    target = load_target(str(path))
    assert (target.name, target.quantize, target.optimize) == ("kiosk", "fp16", False)
    assert load_target(str(path), quantize="none").quantize == "none"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "watchos"], "unknown target 'watchos'"),
        (["--target", "android", "--quantize", "fp16"], "target android cannot take --quantize fp16"),
        (["--target", "ios", "--quantize", "fp16"], "target ios cannot take --quantize fp16"),
        (["--quantize", "int4"], "--quantize 'int4' must be one of none, int8, fp16"),
    ],
)
def test_an_unknown_target_or_impossible_quantization_fails_before_any_work(tmp_path, search_corpus, capsys, args, message):
    out = tmp_path / "never" / "model.onnx"
    code = main(["--corpus", str(search_corpus), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.parent.exists()


def test_the_web_target_needs_out_named_model_onnx(tmp_path, search_corpus, capsys):
    out = tmp_path / "never" / "encoder.onnx"
    assert main(["--corpus", str(search_corpus), "--out", str(out), "--target", "web"]) == 2
    assert "pass --out" in capsys.readouterr().err and not out.parent.exists()


def test_load_target_with_quantize_names_target_and_choices():
    with pytest.raises(TargetError, match=r"target android cannot take --quantize fp16 \(it takes none, int8\)"):
        load_target("android", quantize="fp16")


# --- What each target's bundle holds ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_each_bundle_holds_exactly_what_the_target_ships_and_lists_every_file(tiny_bundles, name):
    bundle = tiny_bundles[name]
    manifest = _manifest(bundle)
    # the export's timings lie beside the manifest; they are not part of what ships (the manifest does not list them)
    assert _listing(bundle) == EXPECTED_FILES[name] | COMMON_FILES | {MANIFEST_NAME, TIMINGS_NAME}
    assert set(manifest["files"]) == EXPECTED_FILES[name] | COMMON_FILES
    for file, entry in manifest["files"].items():
        assert (bundle / file).stat().st_size == entry["bytes"]
    assert manifest["target"]["name"] == name and manifest["target"]["quantize"] == "int8"


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_onnxruntime_loads_every_model_file_and_it_answers_as_the_manifest_says(tiny_bundles, name):
    bundle = tiny_bundles[name]
    manifest = _manifest(bundle)
    model_files = [f for f in manifest["files"] if f.endswith((".onnx", ".ort"))]
    assert model_files
    for file in model_files:
        session = ort.InferenceSession(str(bundle / file), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == manifest["parity"]["outputs"]
    # every stage after export was checked against fp32 and met its bound
    checks = [stage["check"] for stage in manifest["stages"] if "check" in stage]
    assert [stage["stage"] for stage in manifest["stages"]][0] == "export"
    assert checks and all(c["texts_checked"] == manifest["parity"]["texts_checked"] for c in checks)
    for check in checks:
        if check["precision"] == "fp32":
            assert check["max_abs_diff"] <= 1e-4
        else:
            assert check["mean_cosine"] >= 0.99 and check["min_cosine"] >= 0.98
            assert check["bound"] == "mean_cosine >= 0.99 and min_cosine >= 0.98"


def test_cpu_fuses_then_quantizes_and_reports_the_embedding_bytes(tiny_bundles):
    manifest = _manifest(tiny_bundles["cpu"])
    stages = {stage["stage"]: stage for stage in manifest["stages"]}
    assert list(stages) == ["export", "optimize", "quantize int8"]
    assert stages["optimize"]["fused"]["Attention"] == 2  # tiny BERT: 2 layers
    assert stages["optimize"]["check"]["precision"] == "fp32"
    graph = onnx.load(str(tiny_bundles["cpu"] / "model.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    # the default (--oov tail here: 600-token vocabulary, this corpus leaves 256+ rows outside) decodes its rows before
    # the embedding's LayerNorm, so EmbedLayerNormalization is the one fusion it loses (docs/oov.md); the others hold
    assert manifest["vocab"]["oov"] == "tail"
    assert {"QAttention", "MatMulInteger", "SkipLayerNormalization"} <= ops and "QEmbedLayerNormalization" not in ops
    fp32_bytes = stages["export"]["embedding"]["bytes"]
    assert fp32_bytes == manifest["vocab"]["kept"] * 32 * 4  # hidden size 32, float32
    assert manifest["embedding_bytes"]["model.onnx"] == {"dtype": "uint8", "bytes": fp32_bytes // 4}


@pytest.mark.parametrize("name, ep", [("android", "NNAPI"), ("ios", "CoreML MLProgram")])
def test_mobile_bundles_carry_the_usability_report_and_a_reduced_build_config(tiny_bundles, name, ep):
    bundle = tiny_bundles[name]
    manifest = _manifest(bundle)
    usability = manifest["mobile"]["usability"]
    assert usability["tool"] == "onnxruntime.tools.check_onnx_model_mobile_usability"
    assert any(line.startswith("Checking") for line in usability["report"])
    partitions = usability["partitions"][ep]["as_exported"]
    assert 0 < partitions["supported_nodes"] < partitions["nodes"] and partitions["unsupported_ops"]
    assert "MatMulInteger" in " ".join(partitions["unsupported_ops"])  # int8 kernels stay on the CPU EP
    convert = next(stage for stage in manifest["stages"] if stage["stage"] == "convert to ORT")
    assert (convert["optimization_style"], convert["target_platform"]) == ("Fixed", "arm")
    config = (bundle / "required_operators_and_types.config").read_text(encoding="utf-8")
    assert "DynamicQuantizeLinear" in config and "# - model.ort" in config and str(bundle.parent) not in config
    assert manifest["embedding_bytes"]["model.ort"]["dtype"] == "uint8"


def test_web_bundle_has_the_transformers_js_layout(tiny_bundles):
    bundle = tiny_bundles["web"]
    manifest = _manifest(bundle)
    assert manifest["embedding_bytes"]["onnx/model.onnx"]["dtype"] == "float32"
    assert manifest["embedding_bytes"]["onnx/model_quantized.onnx"]["dtype"] == "uint8"
    ops = {node.op_type for node in onnx.load(str(bundle / "onnx/model.onnx")).graph.node}
    assert not ops & {"Attention", "EmbedLayerNormalization"}  # standard ops only: onnxruntime-web runs them


@pytest.mark.parametrize(
    "target, quantize, model, dtype, ratio",
    [("cpu", "none", "model.onnx", "float32", 1), ("cpu", "fp16", "model.onnx", "float16", 2),
     ("web", "fp16", "onnx/model_fp16.onnx", "float16", 2), ("android", "none", "model.ort", "float32", 1)],
)
def test_quantize_overrides_the_profile(tmp_path, tiny_bert, search_corpus, target, quantize, model, dtype, ratio):
    out = tmp_path / "app" / "model.onnx"
    result = run(ExportOptions(corpus=[str(search_corpus)], out=str(out), model=str(tiny_bert), target=target, quantize=quantize))
    manifest = result.manifest.to_json()
    assert manifest["target"]["quantize"] == quantize
    assert model in manifest["files"]
    stages = [stage["stage"] for stage in manifest["stages"]]
    assert ("quantize " + quantize in stages) == (quantize != "none")
    assert manifest["embedding_bytes"][model] == {"dtype": dtype, "bytes": manifest["embedding_bytes"]["fp32"]["bytes"] // ratio}
    ort.InferenceSession(str(out.parent / model), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("target", ["cpu", "web"])
def test_fp16_keeps_sentence_pooling_in_fp32(tmp_path, tiny_sentence_encoder, search_corpus, target):
    """fp16 converts the encoder, not the pooling after it: NORM_EPS (1e-12) is 0 in fp16, and a graph whose pooling
    mixed fp16 states with fp32 constants did not load at all."""
    out = tmp_path / "app" / "model.onnx"
    result = run(ExportOptions(corpus=[str(search_corpus)], out=str(out), model=str(tiny_sentence_encoder), target=target,
                               quantize="fp16"))
    model_name = "model.onnx" if target == "cpu" else "onnx/model_fp16.onnx"
    model = onnx.load(str(out.parent / model_name))
    pooling = [node for node in model.graph.node if node.name.startswith(POOL_NODE_PREFIX)]
    assert pooling and {node.op_type for node in pooling} >= {"ReduceSum", "ReduceL2", "Max", "Div"}
    constants = {t.name: t for t in model.graph.initializer}
    assert constants["pool/norm_eps"].data_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)  # the encoder is fp16
    check = next(stage["check"] for stage in result.manifest.stages if stage["stage"] == "quantize fp16")
    assert check["min_cosine"] >= 0.999
    session = ort.InferenceSession(str(out.parent / model_name), providers=["CPUExecutionProvider"])
    ids = np.asarray([[2, 40, 41, 42, 3]], dtype=np.int64)
    vector = session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})[0]
    assert vector.dtype == np.float32 and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3


def test_a_sentence_encoder_is_fused_like_a_classifier(tmp_path, tiny_sentence_encoder, search_corpus):
    """The appended pooling broke the optimizer's shape inference and, with it, every attention fusion."""
    out = tmp_path / "app" / "model.onnx"
    # --oov unk: the graph with every fusion (under the default tail the embedding's own fusion is lost by design)
    manifest = run(ExportOptions(corpus=[str(search_corpus)], out=str(out), model=str(tiny_sentence_encoder), oov="unk")).manifest.to_json()
    stages = {stage["stage"]: stage for stage in manifest["stages"]}
    assert stages["optimize"]["fused"]["Attention"] == 2 and stages["optimize"]["fused"]["EmbedLayerNormalization"] == 1
    assert stages["quantize int8"]["ops"]["QAttention"] == 2
    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == ["last_hidden_state", "sentence_embedding"]
    assert sum(node.name.startswith(POOL_NODE_PREFIX) for node in graph.node) == 10


def test_a_stage_whose_output_onnxruntime_cannot_load_is_a_one_line_error(tmp_path, tiny_bert, search_corpus, monkeypatch):
    def broken_fp16(src: Path, dst: Path) -> Path:
        # stands for a converter that writes a broken graph: a node reads a tensor nothing produces
        model = onnx.load(str(src))
        model.graph.node[-1].input[0] = "lost_in_conversion"
        onnx.save(model, str(dst))
        return dst

    monkeypatch.setattr(quantize_module, "convert_fp16", broken_fp16)
    out = tmp_path / "app" / "model.onnx"
    with pytest.raises(VerificationError, match=r"^stage 'quantize fp16' failed: onnxruntime cannot load its output: ") as error:
        run(ExportOptions(corpus=[str(search_corpus)], out=str(out), model=str(tiny_bert), target="cpu", quantize="fp16"))
    assert "\n" not in str(error.value)
    assert not out.parent.exists()


def test_a_stage_that_misses_its_bound_fails_the_export_naming_it_and_writes_nothing(tmp_path, tiny_bert, search_corpus, monkeypatch):
    def scrambled_int8(src: Path, dst: Path) -> Path:
        # stands for a quantizer that lost the model: the word embedding rows are shuffled
        model = onnx.load(str(src))
        for tensor in model.graph.initializer:
            if tensor.name.endswith("word_embeddings.weight"):
                table = numpy_helper.to_array(tensor)
                tensor.CopyFrom(numpy_helper.from_array(table[np.random.default_rng(0).permutation(len(table))], tensor.name))
        onnx.save(model, str(dst))
        return dst

    monkeypatch.setattr(quantize_module, "quantize_int8", scrambled_int8)
    out = tmp_path / "app" / "model.onnx"
    with pytest.raises(VerificationError, match=r"^stage 'quantize int8' failed: (mean )?cosine similarity to fp32 is .* < 0\.9[89]"):
        run(ExportOptions(corpus=[str(search_corpus)], out=str(out), model=str(tiny_bert), target="android"))
    assert not out.parent.exists()


# --- check_stage on hand-built graphs: each bound, pass and fail ----------------------------------------------------


def _bag_of_embeddings(path: Path, table: np.ndarray, output: str) -> Path:
    """output[b] = mean over the text's tokens of table[id]: a classifier (``logits``) or an encoder's sentence vector."""
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
        helper.make_node("ReduceMean", ["rows", "axis"], [output], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "bag",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["b", table.shape[1]])],
        [numpy_helper.from_array(table.astype(np.float32), "table"), numpy_helper.from_array(np.array([1]), "axis")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _reference(path: Path, bound, texts: int = 50) -> OnnxReference:
    rng = np.random.default_rng(1)
    feeds = [{"input_ids": rng.integers(0, 20, (1, 6)), "attention_mask": np.ones((1, 6), np.int64)} for _ in range(texts)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = [dict(zip(names, session.run(names, feed))) for feed in feeds]
    return OnnxReference([f"text {i}" for i in range(texts)], feeds, outputs, bound)


def test_check_stage_fp32_bound_is_1e_4(tmp_path):
    table = np.random.default_rng(0).normal(size=(20, 3))
    reference = _reference(_bag_of_embeddings(tmp_path / "fp32.onnx", table, "logits"), CLASSIFIER.quantized_bound)
    near = check_stage("optimize", _bag_of_embeddings(tmp_path / "near.onnx", table + 5e-5, "logits"), reference, "fp32")
    assert 4e-5 < near.max_abs_diff <= 1e-4 and near.texts_checked == 50
    with pytest.raises(VerificationError, match=r"^stage 'optimize' failed: logits differs from the fp32 ONNX by .* > 0\.0001"):
        check_stage("optimize", _bag_of_embeddings(tmp_path / "far.onnx", table + 2e-4, "logits"), reference, "fp32")


def test_check_stage_int8_bound_is_99_percent_top1_agreement(tmp_path):
    table = np.random.default_rng(0).normal(size=(20, 3))
    reference = _reference(_bag_of_embeddings(tmp_path / "fp32.onnx", table, "logits"), CLASSIFIER.quantized_bound)
    same = check_stage("quantize int8", _bag_of_embeddings(tmp_path / "same.onnx", table + 1e-3, "logits"), reference, "int8")
    assert same.top1_agreement == 1.0 and same.bound == "top1_agreement >= 0.99"
    swapped = table[:, [1, 0, 2]]
    with pytest.raises(VerificationError, match=r"^stage 'quantize int8' failed: top-1 agreement with fp32 is .*% \(\d+ of 50\) < 99%"):
        check_stage("quantize int8", _bag_of_embeddings(tmp_path / "swapped.onnx", swapped, "logits"), reference, "int8")


def test_check_stage_int8_bound_for_encoders_is_mean_cosine_99_with_a_floor(tmp_path):
    table = np.random.default_rng(0).normal(size=(20, 8))
    reference = _reference(_bag_of_embeddings(tmp_path / "fp32.onnx", table, "sentence_embedding"), ENCODER.quantized_bound)
    close = check_stage("convert to ORT", _bag_of_embeddings(tmp_path / "close.onnx", table * 1.5 + 1e-3, "sentence_embedding"), reference, "int8")
    assert close.min_cosine > 0.999  # scale does not change a direction
    noisy = table + np.random.default_rng(2).normal(scale=0.5, size=table.shape)
    with pytest.raises(VerificationError, match=r"^stage 'convert to ORT' failed: mean cosine similarity to fp32 is 0\.\d+ < 0\.99"):
        check_stage("convert to ORT", _bag_of_embeddings(tmp_path / "noisy.onnx", noisy, "sentence_embedding"), reference, "int8")
    # 199 texts use rows 0-18, one text uses only row 19; that row turned orthogonal keeps the mean at 0.995,
    # and the floor catches the one text
    fp32 = _bag_of_embeddings(tmp_path / "fp32-200.onnx", table, "sentence_embedding")
    rng = np.random.default_rng(3)
    feeds = [{"input_ids": rng.integers(0, 19, (1, 6)), "attention_mask": np.ones((1, 6), np.int64)} for _ in range(199)]
    feeds.append({"input_ids": np.full((1, 6), 19), "attention_mask": np.ones((1, 6), np.int64)})
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    outputs = [{"sentence_embedding": session.run(["sentence_embedding"], feed)[0]} for feed in feeds]
    reference = OnnxReference([f"text {i}" for i in range(200)], feeds, outputs, ENCODER.quantized_bound)
    ruined, row, other = table.copy(), table[19], rng.normal(size=8)
    ruined[19] = other - (other @ row) / (row @ row) * row  # orthogonal to what it was
    with pytest.raises(VerificationError, match=r"cosine similarity to fp32 is -?0\.\d+ < 0\.98 on corpus text 'text 199'"):
        check_stage("convert to ORT", _bag_of_embeddings(tmp_path / "ruined.onnx", ruined, "sentence_embedding"), reference, "int8")
