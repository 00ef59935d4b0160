"""Bad input for every subcommand, shared by tests/test_cli_errors.py and benchmarks/reliability.py (issue 15).

The options are read from the parsers, so a new option is walked too. Values a parser can judge from the option's
type (an int that is no number, a choice that is not one, a value given to a flag, 0 for a count) are made here;
BAD_VALUES adds what only the meaning says is bad ("command:dest" for one subcommand only). An option with neither
fails test_every_option_of_every_subcommand_has_a_bad_value_to_try: give it a bad value when you add it. "{name}" is a
file or folder `make_inputs` writes; words after the value are other options the case needs.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

BAD_VALUES: dict[str, list[list[str]]] = {
    "model": [["{missing}"], ["{text}"], ["{empty_folder}"], ["{broken_model}"], ["no-such-org/no-such-model"]],
    "export:model": [["{remote_code_model}"]],  # scan reads only the tokenizer and config
    "corpus": [["{missing}"], ["{empty_folder}"], ["{latin1.txt}"], ["{empty.txt}"], ["{blank.txt}"], ["{unknown.pdf}"],
               ["{no_text_column.csv}"], ["{not_json.jsonl}"], ["{mixed_labels.txt}"]],
    "export:corpus": [["{one_label.txt}"], ["{partly_labelled.txt}"]],  # what training cannot use; scan only counts
    "out": [["{tmp}/model.bin"], ["{empty_folder}"], ["{text}/model.onnx"]],
    "target": [["toaster"], ["{bad.toml}"], ["{missing}.toml"], ["{unknown_key.toml}"]],
    "quantize": [["int4"], ["fp16", "--target", "android"]],
    "keep_tokens": [["{missing}"], ["{latin1.txt}"], ["{empty_folder}"]],
    "min_count": [["-3"]],
    "max_vocab": [["2"]],
    "max_bytes": [["-5"], ["12 XB"], ["1 kB"], ["1e400"]],
    "prior_words": [["-1"]],
    "prior_lang": [["xx", "--prior-words", "10"], [",,", "--prior-words", "10"], ["en"]],  # en: without --prior-words
    "oov_dropout": [["1.5"], ["-0.1"], ["nan"]],
    "task": [["fill-mask", "--oov", "remap"]],
    "eval_file": [["{missing}"], ["{latin1.txt}"], ["{unknown_labels.txt}"], ["{unlabelled.txt}"]],
    "eval_split": [["0"], ["1"], ["nan"]],
    "epochs": [["-2"]],
    "lr": [["0"], ["-1e-4"], ["inf"], ["nan"], ["1e30"]],  # 1e30: training diverges
    "batch_size": [["-16"]],
    "max_length": [["100000"]],
    "seed": [["-1"], ["99999999999999999999999"]],
    "device": [["gpu"], ["cpu:abc"], ["cuda:99"]],
    "save_full": [["{text}"], ["{nonempty_folder}"]],
    "heldout": [["{missing}"], ["{latin1.txt}"]],
    "bundle": [["{missing}"], ["{text}"], ["{empty_folder}"], ["{corrupt_bundle}"], ["{mixed_bundle}"]],
    "plot": [["{tmp}/size.foo"], ["{missing}/size.png"]],
    "budget": [["{missing}"], ["{bad.toml}"], ["{unknown_key.toml}"], ["{latin1.txt}"]],
    "baseline": [["{missing}"], ["{text}"], ["{list.json}"], ["{other_model.json}"]],
    "tolerance": [["abc"], ["-1%"], ["nan%"]],
}


@dataclass(frozen=True)
class Case:
    command: str  # export, scan, size, check, targets
    option: str  # "--lr", "BUNDLE_DIR", or "(unknown option)"
    words: tuple[str, ...]  # the value, then other options the case needs
    flag: bool = False  # the option takes no value: words[0] is glued to it ("--quiet=yes")

    @property
    def id(self) -> str:
        return f"{self.command}-{self.option}-{' '.join(self.words)}"


def parsers() -> dict:
    from pema_export.cli import check, export, scan, size, targets

    return {"export": export.parser(), "scan": scan.parser(), "size": size.parser(), "check": check.parser(),
            "targets": targets.parser()}


def options(parser) -> list:
    return [action for action in parser._actions if action.dest != "help"]


def generic_bad_values(action) -> list[list[str]]:
    """What the option's declaration alone says is bad."""
    from pema_export.cli.options import _AT_LEAST_ONE

    if action.nargs == 0:  # a flag: it takes no value
        return [["=yes"]]
    values = []
    if action.choices:
        values.append(["bogus"])
    if action.type is int:
        values.append(["many"])
    if action.type is float:
        values.append(["x"])
    if action.dest in _AT_LEAST_ONE:
        values.append(["0"])
    return values


def bad_values(command: str, action) -> list[list[str]]:
    return generic_bad_values(action) + BAD_VALUES.get(action.dest, []) + BAD_VALUES.get(f"{command}:{action.dest}", [])


def untried_options() -> list[str]:
    return [f"{command} {action.option_strings or action.dest}" for command, parser in parsers().items()
            for action in options(parser) if not bad_values(command, action)]


def cases() -> list[Case]:
    found = []
    for command, parser in parsers().items():
        found.append(Case(command, "(unknown option)", ("--no-such-option",)))
        for action in options(parser):
            name = action.option_strings[0] if action.option_strings else action.metavar
            for bad in bad_values(command, action):
                found.append(Case(command, name, tuple(bad), flag=action.nargs == 0))
    return found


def argv(case: Case, inputs: dict[str, Path], tiny_bert: Path, bundle: Path, out: Path, corpus: Path) -> list[str]:
    """The command line of ``case``: a good command for its subcommand with the one option made bad."""
    base = {
        "export": {"--model": str(tiny_bert), "--corpus": str(corpus), "--out": str(out), "--epochs": "1"},
        "scan": {"--model": str(tiny_bert), "--corpus": str(corpus)},
        "size": {"BUNDLE_DIR": str(bundle)}, "check": {"BUNDLE_DIR": str(bundle)}, "targets": {},
    }[case.command]
    value, *extra = [re.sub(r"\{([^}]+)\}", lambda m: str(inputs[m.group(1)]), word) for word in case.words]
    if case.option == "(unknown option)":
        given, extra = {}, [value]
    elif case.flag:
        given = {f"{case.option}{value}": None}
    else:
        given = {case.option: value}
    chosen = {**base, **given}
    line = [case.command] if case.command != "export" else []
    line += [v for key, v in chosen.items() if key.isupper()]  # positionals first
    for key, v in chosen.items():
        if not key.isupper():
            line += [key] if v is None else [key, v]
    return line + extra + (["--quiet"] if case.command == "export" else [])


def make_inputs(folder: Path, tiny_bert: Path, bundle: Path) -> dict[str, Path]:
    """The files and folders BAD_VALUES names, in ``folder``; ``bundle`` is a good bundle to spoil copies of."""
    files = folder / "inputs"
    files.mkdir()

    def write(name: str, content: str | bytes) -> Path:
        path = files / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    made = {"tmp": folder, "missing": folder / "missing" / "nothing-here.txt"}
    made["text"] = write("words.txt", "where is my order\n")
    for name, content in {
        "latin1.txt": b"refund\tr\xe9clamation\n", "empty.txt": b"", "blank.txt": "\n  \n", "unknown.pdf": "%PDF-1.4\n",
        "no_text_column.csv": "query,label\nhello,a\n", "not_json.jsonl": "text: hello\n",
        "one_label.txt": "refund\tmoney back\nrefund\trefund me\n",
        "partly_labelled.txt": "refund\tmoney back\nwhere is my order\n",
        "mixed_labels.txt": "1\tmoney back\nlate\twhere is my order\n",
        "unknown_labels.txt": "no_such_label\twhere is my order\n", "unlabelled.txt": "where is my order\n",
        "bad.toml": "{\n", "unknown_key.toml": 'name = "x"\nmax_byte = 5\n', "list.json": "[1, 2]\n",
    }.items():
        made[name] = write(name, content)
    made["empty_folder"] = files / "empty-folder"
    made["empty_folder"].mkdir()
    made["nonempty_folder"] = files / "full-folder"
    made["nonempty_folder"].mkdir()
    (made["nonempty_folder"] / "keep.txt").write_text("x")
    made["broken_model"] = shutil.copytree(tiny_bert, files / "broken-model")
    (made["broken_model"] / "config.json").write_text('{"model_type": ')
    made["remote_code_model"] = shutil.copytree(tiny_bert, files / "remote-code-model")
    config = json.loads((tiny_bert / "config.json").read_text())
    config.update(model_type="custom-x", auto_map={"AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel"})
    (made["remote_code_model"] / "config.json").write_text(json.dumps(config))
    made["corrupt_bundle"] = files / "corrupt-bundle"
    made["corrupt_bundle"].mkdir()
    (made["corrupt_bundle"] / "model.onnx").write_bytes(b"\x08\x07 not a model")
    made["mixed_bundle"] = shutil.copytree(bundle, files / "mixed-bundle")
    (made["mixed_bundle"] / "tokenizer.json").write_text((tiny_bert / "tokenizer.json").read_text())  # another export's
    manifest = json.loads((bundle / "pema-manifest.json").read_text())
    manifest["model"]["source"] = "someone/else"
    made["other_model.json"] = write("other_model.json", json.dumps(manifest))
    return made


# --- Corpora from outside: random bytes, mixed encodings, huge lines, a layout that does not match the extension ---

SAMPLE_LINES = [line for line in (SAMPLES / "app_texts.txt").read_text(encoding="utf-8").splitlines() if line][:60]
ENCODINGS = ["utf-8", "latin-1", "utf-16", "cp1252", "shift_jis", "utf-8-sig"]
# corpora that once ended in a traceback, and one good corpus with a huge line: tried on every run
FIXED_CORPORA = [
    (b"[" * 100_000 + b"\n", ".jsonl"),  # deeper than Python's JSON parser recurses
    (b'{"text": "a\\ud800b", "label": "x"}\n', ".jsonl"),  # half a surrogate pair: not text
    (b"text\n" + b"x" * 200_000 + b"\n", ".csv"),  # over the csv module's field limit
    (b"hello\x00world\nsecond line\n", ".txt"),  # NUL is a character like any other
    ("".join(line.split("\t", 1)[1] + "\n" for line in SAMPLE_LINES[:8]).encode() + b"refund " * 30_000, ".txt"),
]


def render(lines: list[str], layout: str, labelled: bool) -> str:
    """Sample lines (label<TAB>text) written in a corpus format's layout, with or without their labels."""
    pairs = [line.split("\t", 1) for line in lines]
    if layout == "txt":
        return "".join((f"{label}\t{text}" if labelled else text) + "\n" for label, text in pairs)
    if layout == "jsonl":
        return "".join(json.dumps({"text": text, **({"label": label} if labelled else {})}) + "\n" for label, text in pairs)
    delimiter = "\t" if layout == "tsv" else ","
    header = f"label{delimiter}text\n" if labelled else "text\n"
    return header + "".join((f"{label}{delimiter}" if labelled else "") + f'"{text}"\n' for label, text in pairs)


def corpus_files():
    """A hypothesis strategy: (file content, extension)."""
    from hypothesis import strategies as st

    suffixes = st.sampled_from([".txt", ".tsv", ".csv", ".jsonl"])
    texts = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
    random_bytes = st.binary(min_size=1, max_size=600)
    mixed_encodings = st.lists(st.tuples(texts, st.sampled_from(ENCODINGS)), min_size=1, max_size=12).map(
        lambda lines: b"\n".join(text.encode(encoding, errors="replace") for text, encoding in lines) + b"\n")
    # sample texts before one line of 20k-200k characters (unlabelled: no training, the whole export runs)
    huge_line = st.tuples(texts, st.integers(20_000, 200_000), st.lists(st.sampled_from(SAMPLE_LINES), min_size=1, max_size=8)).map(
        lambda t: "".join(line.split("\t", 1)[1] + "\n" for line in t[2]).encode() + ((t[0] + " ") * (t[1] // (len(t[0]) + 1))).encode())
    # real texts in one format's layout, under any extension (the same one included: a good corpus)
    layouts = st.tuples(st.lists(st.sampled_from(SAMPLE_LINES), min_size=1, max_size=30),
                        st.sampled_from(["txt", "tsv", "csv", "jsonl"]), st.booleans())
    other_layout = layouts.map(lambda t: render(*t).encode())
    return st.tuples(st.one_of(random_bytes, mixed_encodings, huge_line, other_layout), suffixes)
