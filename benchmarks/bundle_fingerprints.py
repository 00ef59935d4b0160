"""sha256 of every bundle file for a spread of export configurations, to prove a refactor changed no byte.

Run it on one commit, then on another, and compare:

    .venv/bin/python benchmarks/bundle_fingerprints.py --work /tmp/fp-before --json before.json
    .venv/bin/python benchmarks/bundle_fingerprints.py --work /tmp/fp-after --fixtures /tmp/fp-before/fixtures --json after.json
    .venv/bin/python benchmarks/bundle_fingerprints.py --compare before.json after.json

Each export runs through the command line in its own process (``python -m pema_export``), so the same code path
a user takes is measured. Besides the bundle files it records ``pema-export scan --json`` for some corpora and
``pema-export size --json`` of every bundle, and the export's summary on stdout. The tiny fixture models
(tests/conftest.py) are random: build them once (``--work``'s ``fixtures/``) and pass ``--fixtures`` to reuse the
very same folders for the second run. About 20 minutes on 2 shared cores, mostly the MiniLM fine-tuning runs.

Run both from the same path with the same environment (e.g. ``env -i PATH=... HOME=... PYTHONPATH=...``): the
.ort files are byte-identical only then. The converter runs without address randomisation (ort_format.py), but the
size of its environment and argument strings still moves the stack, and with it the hash seeds that order the
flatbuffer: a different PYTHONPATH or working directory gave a different model.ort for the same graph.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
sys.path.insert(0, str(REPO / "tests"))

# --max-bytes for the prior-words run: below what the corpus and 2,000 prior words would make, so the cap binds.
PRIOR_MAX_BYTES = "12.1 MB"

# name -> export arguments; {name} is a fixture folder or corpus file, filled in at run time
EXPORTS = {
    "minilm-cls-cpu": ["--corpus", "{app120}", "--epochs", "1"],
    "minilm-cls-none": ["--corpus", "{app120}", "--epochs", "1", "--quantize", "none"],
    "minilm-cls-android": ["--corpus", "{app120}", "--epochs", "1", "--target", "android"],
    "minilm-cls-web": ["--corpus", "{app120}", "--epochs", "1", "--target", "web"],
    "minilm-cls-remap": ["--corpus", "{app120}", "--epochs", "1", "--oov", "remap"],
    "minilm-cls-fallback": ["--corpus", "{app120}", "--epochs", "1", "--oov", "fallback"],
    "minilm-cls-prior-maxbytes": ["--corpus", "{app120}", "--epochs", "1", "--prior-words", "2000", "--prior-lang", "en",
                                  "--max-bytes", PRIOR_MAX_BYTES],
    "minilm-cls-eval": ["--corpus", "{app120}", "--epochs", "1", "--quantize", "none", "--eval", str(SAMPLES / "heldout.txt")],
    "minilm-enc-cpu": ["--corpus", str(SAMPLES / "search_texts.txt")],
    "minilm-enc-web": ["--corpus", str(SAMPLES / "search_texts.txt"), "--target", "web"],
    "minilm-enc-android": ["--corpus", str(SAMPLES / "search_texts.txt"), "--target", "android"],
    "minilm-enc-eval": ["--corpus", "{search120}", "--eval", "{search_rest}"],
    "tiny-bert-cls-cpu": ["--model", "{tiny_bert}", "--corpus", "{app120}", "--epochs", "1", "--quantize", "none"],
    "tiny-bert-cls-remap-ios": ["--model", "{tiny_bert}", "--corpus", "{app120}", "--epochs", "1", "--target", "ios",
                                "--oov", "remap", "--oov-dropout", "0.1", "--quantize", "none"],
    "tiny-bert-enc-fp16": ["--model", "{tiny_bert}", "--corpus", "{family}", "--quantize", "fp16"],
    "tiny-st-android": ["--model", "{tiny_st}", "--corpus", "{family}", "--target", "android"],
    "tiny-st-web": ["--model", "{tiny_st}", "--corpus", "{family}", "--target", "web"],
    "tiny-distilbert-cpu": ["--model", "{tiny_distilbert}", "--corpus", "{family}"],
    "tiny-roberta-unk": ["--model", "{tiny_roberta}", "--corpus", "{family}", "--oov", "unk"],
    "tiny-roberta-auto": ["--model", "{tiny_roberta}", "--corpus", "{family}"],
    "tiny-xlmr-cls-unk": ["--model", "{tiny_xlmr}", "--corpus", "{app60}", "--oov", "unk", "--eval-split", "0.2"],
    "tiny-albert-unk": ["--model", "{tiny_albert}", "--corpus", "{family}", "--oov", "unk"],
    "tiny-albert-web": ["--model", "{tiny_albert}", "--corpus", "{family}", "--target", "web"],
    "tiny-electra-unk": ["--model", "{tiny_electra}", "--corpus", "{family}", "--oov", "unk"],
    "tiny-electra-fallback-android": ["--model", "{tiny_electra}", "--corpus", "{family}", "--oov", "fallback", "--target", "android"],
    "tiny-mlm-bert": ["--model", "{mlm_bert}", "--corpus", "{mlm}", "--task", "fill-mask", "--quantize", "none"],
    "tiny-mlm-bert-unk-int8": ["--model", "{mlm_bert}", "--corpus", "{mlm}", "--task", "fill-mask", "--oov", "unk"],
    "tiny-mlm-bert-unk-fp16": ["--model", "{mlm_bert}", "--corpus", "{mlm}", "--task", "fill-mask", "--oov", "unk", "--quantize", "fp16"],
    "tiny-mlm-xlmr": ["--model", "{mlm_xlmr}", "--corpus", "{mlm}", "--task", "fill-mask", "--quantize", "none"],
}

SCANS = {
    "scan-minilm-cls": ["--corpus", "{app120}", "--heldout", str(SAMPLES / "heldout.txt")],
    "scan-minilm-cls-remap-android": ["--corpus", "{app120}", "--oov", "remap", "--target", "android", "--heldout", str(SAMPLES / "heldout.txt")],
    "scan-minilm-prior-maxbytes": ["--corpus", "{app120}", "--prior-words", "2000", "--prior-lang", "en", "--max-bytes", PRIOR_MAX_BYTES],
    "scan-minilm-enc-web": ["--corpus", str(SAMPLES / "search_texts.txt"), "--target", "web"],
    "scan-minilm-enc-fallback-none": ["--corpus", str(SAMPLES / "search_texts.txt"), "--oov", "fallback", "--quantize", "none"],
    "scan-tiny-roberta": ["--model", "{tiny_roberta}", "--corpus", "{family}", "--heldout", "{search_rest}"],
    "scan-tiny-albert-ios": ["--model", "{tiny_albert}", "--corpus", "{family}", "--target", "ios"],
}


def build_fixtures(folder: Path) -> dict[str, str]:
    """The tiny models and corpora, built once into ``folder`` (reused when it already holds them)."""
    import conftest as c

    done = folder / "fixtures.json"
    if done.is_file():
        return json.loads(done.read_text())
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    wordpiece, bpe, unigram = c.train_wordpiece(), c.train_byte_level_bpe(), c.train_unigram()
    paths = {
        "tiny_bert": c.save_tiny_model(folder / "tiny-bert", "bert", wordpiece),
        "tiny_distilbert": c.save_tiny_model(folder / "tiny-distilbert", "distilbert", wordpiece),
        "tiny_roberta": c.save_tiny_family_model(folder / "tiny-roberta", "roberta", c.ROBERTA_TOKENIZER_CONFIG, bpe,
                                                 **c.TINY_SIZES, **c.ROBERTA_IDS),
        "tiny_xlmr": c.save_tiny_family_model(folder / "tiny-xlmr", "xlm-roberta", c.XLMR_TOKENIZER_CONFIG, unigram,
                                              **c.TINY_SIZES, **c.ROBERTA_IDS),
        "tiny_electra": c.save_tiny_family_model(folder / "tiny-electra", "electra", c.ELECTRA_TOKENIZER_CONFIG, wordpiece,
                                                 embedding_size=16, pad_token_id=0, **c.TINY_SIZES),
        "mlm_bert": c.save_tiny_family_model(folder / "mlm-bert", "bert", {**c.ELECTRA_TOKENIZER_CONFIG, "tokenizer_class": "BertTokenizer"},
                                             wordpiece, head="mlm", pad_token_id=0, **c.TINY_SIZES),
        "mlm_xlmr": c.save_tiny_family_model(folder / "mlm-xlmr", "xlm-roberta", c.XLMR_TOKENIZER_CONFIG, unigram, head="mlm",
                                             **c.TINY_SIZES, **c.ROBERTA_IDS),
    }
    st = c.save_tiny_model(folder / "tiny-st", "bert", wordpiece)
    (st / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (st / "1_Pooling").mkdir(exist_ok=True)
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    paths["tiny_st"] = st
    albert_tokenizer = c.train_albert_sentencepiece(folder / "albert-tokenizer")
    albert = folder / "tiny-albert"
    albert.mkdir(exist_ok=True)
    for name in ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (albert / name).write_bytes((albert_tokenizer / name).read_bytes())
    paths["tiny_albert"] = c.save_tiny_family_model(albert, "albert", {}, embedding_size=16, pad_token_id=0, bos_token_id=2,
                                                    eos_token_id=3, **c.TINY_SIZES)
    from transformers import AutoModelForMaskedLM

    for name in ("mlm_bert", "mlm_xlmr"):  # as tests/test_fill_mask.py: a spread output bias
        model = AutoModelForMaskedLM.from_pretrained(paths[name])
        with torch.no_grad():
            model.get_output_embeddings().bias.copy_(torch.linspace(-1, 1, model.config.vocab_size))
        model.save_pretrained(paths[name])
    corpora = folder / "corpora"
    corpora.mkdir(exist_ok=True)
    paths["app120"] = c.sample_head(corpora, "app_texts.txt", 120, name="app120.txt")
    paths["app60"] = c.sample_head(corpora, "app_texts.txt", 60, name="app60.txt")
    search = (SAMPLES / "search_texts.txt").read_text(encoding="utf-8").splitlines()
    (corpora / "search120.txt").write_text("\n".join(search[:120]) + "\n", encoding="utf-8")
    (corpora / "search_rest.txt").write_text("\n".join(search[120:]) + "\n", encoding="utf-8")
    paths["search120"], paths["search_rest"] = corpora / "search120.txt", corpora / "search_rest.txt"
    family = c.TRAINING_TEXT[:40] + ["café crème brûlée 😀 日本", "¿dónde está mi pedido?", "<mask> and [MASK] stay special"]
    (corpora / "family.txt").write_text("\n".join(family) + "\n", encoding="utf-8")
    (corpora / "mlm.txt").write_text("\n".join(c.TRAINING_TEXT[:30]) + "\n", encoding="utf-8")
    paths["family"], paths["mlm"] = corpora / "family.txt", corpora / "mlm.txt"
    paths = {name: str(path) for name, path in paths.items()}
    done.write_text(json.dumps(paths, indent=2))
    return paths


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pema_export", *args], capture_output=True, text=True, cwd=cwd)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(work: Path, fixtures: dict[str, str], only: set[str] | None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    record = {}
    for name, args in {**EXPORTS, **SCANS}.items():
        if only and name not in only:
            continue
        args = [arg.format(**fixtures) for arg in args]
        if name in SCANS:
            done = cli(["scan", "--json", *args], work)
            record[name] = {"rc": done.returncode, "stdout_sha256": hashlib.sha256(done.stdout.encode()).hexdigest(),
                            "error": done.stderr.strip().splitlines()[-1:] if done.returncode else []}
            (work / f"{name}.json").write_text(done.stdout)
        else:
            out = Path("bundles") / name / "model.onnx"  # relative: the summary and size report name it the same way
            done = cli([*args, "--out", str(out), "--quiet"], work)
            entry = {"rc": done.returncode, "error": done.stderr.strip().splitlines()[-1:] if done.returncode else [],
                     "summary_sha256": hashlib.sha256(done.stdout.encode()).hexdigest(), "files": {}}
            bundle = work / out.parent
            if done.returncode == 0:
                entry["files"] = {str(p.relative_to(bundle)): sha256(p) for p in sorted(bundle.rglob("*"))
                                  if p.is_file() and p.name != "pema-timings.json"}  # wall times: differ every run
                size = cli(["size", "--json", str(out.parent)], work)
                entry["size_json_sha256"] = hashlib.sha256(size.stdout.encode()).hexdigest()
            record[name] = entry
        print(f"{name:34s} rc {record[name]['rc']}  {len(record[name].get('files', {}))} files {' '.join(record[name]['error'])}",
              flush=True)
    return record


def compare(before: dict, after: dict) -> int:
    files = same = 0
    differences = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            differences.append(f"{name}: only in {'after' if old is None else 'before'}")
            continue
        for key in sorted(set(old) | set(new)):
            if key == "files":
                for file in sorted(set(old["files"]) | set(new["files"])):
                    files += 1
                    if old["files"].get(file) == new["files"].get(file):
                        same += 1
                    else:
                        differences.append(f"{name}/{file}: {old['files'].get(file)} != {new['files'].get(file)}")
            elif old.get(key) != new.get(key):
                differences.append(f"{name}: {key} {old.get(key)} != {new.get(key)}")
    print(f"{len(set(before) & set(after))} configurations, {files} bundle files compared, {same} identical")
    print("\n".join(differences) or "no differences (bundle files, scan --json, size --json, summaries, exit codes)")
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for fixtures, bundles and scan outputs")
    parser.add_argument("--fixtures", type=Path, help="reuse the fixtures built by an earlier run (its --work/fixtures)")
    parser.add_argument("--only", nargs="*", help="configuration names to run")
    parser.add_argument("--json", type=Path, help="write the fingerprints here")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*(json.loads(path.read_text()) for path in args.compare))
    if args.work is None:
        parser.error("--work is required unless --compare")
    fixtures = build_fixtures(args.fixtures or args.work / "fixtures")
    record = fingerprint(args.work, fixtures, set(args.only) if args.only else None)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
