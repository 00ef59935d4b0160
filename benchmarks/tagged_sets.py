"""A second tagged corpus, from text reachable offline: proper names in King James Version clauses.

The token-classification default (the compressed tail with word dropout 0.1, tasks.Task.tail_word_dropout) was
first measured on the sample slot corpus alone (samples/slot_texts.jsonl, an app's support chats). This set is of
another domain and has another kind of unseen word: names. Its held-out chapters are full of names the training
chapters never had, which is exactly the text a pruned vocabulary never saw.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/tagged_sets.py        # build (or reuse) and print the figures
    .venv/bin/python benchmarks/token_classification.py --train build/evalsets/kjv-names/train.jsonl \\
        --heldout build/evalsets/kjv-names/test.jsonl --jsonl benchmarks/token_classification_kjv.jsonl --seeds 0 1 2

Rules (all from the text; no list of names is typed in):
- Source: every verse that ``bible -f Gen1:1-Rev22:21`` prints (packages bible-kjv, bible-kjv-text).
- A *name* is a word the KJV writes capitalized right after a lower-case word ("the sons of Gomer": not a sentence's
  or a speech's first word, "said, Behold") and never in lower case anywhere (Moses, Israel, Jerusalem, Christ; not
  God or Lord, which also occur as "god" and "lord"; not LORD, all capitals).
- A text is one clause: a verse split after ':' and ';', 5 to 30 words.
- Entities (label NAME) are runs of names separated by single spaces ("Simon Peter"), as character spans.
- Train and test are drawn from disjoint chapters (a chapter's names recur in it), seeded; three in four texts hold
  at least one name.
Files: ``OUT/kjv-names/train.jsonl`` and ``test.jsonl`` in the corpus format ``{"text", "entities"}``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evalsets import DEFAULT_OUT, EvalSetError, _clean, _run, _sha256, ensure_packages  # noqa: E402

PACKAGES = ("bible-kjv", "bible-kjv-text")
TRAIN, TEST, SEED = 800, 250, 0
WORDS_MIN, WORDS_MAX = 5, 30
NAMED_SHARE = 0.75
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
AFTER_LOWER_WORD = re.compile(r"[a-z] $")  # "the sons of Gomer": not a sentence or a speech ("said, Behold")


def verses() -> list[tuple[str, str]]:
    """(chapter, verse text) for every verse, as the bible program prints them."""
    ensure_packages(PACKAGES)
    out = []
    for line in _run(["bible", "-f", "Gen1:1-Rev22:21"]).splitlines():
        reference, _, verse = line.partition(" ")
        chapter = re.match(r"(\d?[A-Za-z]+\d+):\d+$", reference)
        if chapter is None:
            raise EvalSetError(f"bible printed a line without a reference: {line[:60]!r}")
        out.append((chapter.group(1), _clean(verse)))
    return out


def names_of(texts: list[str]) -> set[str]:
    """Words capitalized in mid-sentence somewhere and never written in lower case anywhere."""
    lower, mid_capital = set(), set()
    for text in texts:
        for match in WORD.finditer(text):
            word = match.group()
            if word.islower():
                lower.add(word)
            elif word[0].isupper() and not word.isupper() and AFTER_LOWER_WORD.search(text[max(0, match.start() - 2):match.start()]):
                mid_capital.add(word)
    return {word for word in mid_capital if word.lower() not in lower}


def clauses(verse: str) -> list[str]:
    return [part.strip() for part in re.split(r"(?<=[:;])\s+", verse) if part.strip()]


def entities(text: str, names: set[str]) -> list[dict]:
    spans: list[list[int]] = []
    for match in WORD.finditer(text):
        if match.group() not in names:
            continue
        if spans and text[spans[-1][1]:match.start()] == " ":
            spans[-1][1] = match.end()
        else:
            spans.append([match.start(), match.end()])
    return [{"start": start, "end": end, "label": "NAME"} for start, end in spans]


def build(out_dir: Path) -> dict:
    chapters: dict[str, list[str]] = {}
    all_verses = verses()
    names = names_of([text for _, text in all_verses])
    for chapter, verse in all_verses:
        for clause in clauses(verse):
            if WORDS_MIN <= len(clause.split()) <= WORDS_MAX:
                chapters.setdefault(chapter, []).append(clause)
    spans = {clause: entities(clause, names) for texts in chapters.values() for clause in texts}
    rng = random.Random(SEED)
    order = sorted(chapters)
    rng.shuffle(order)
    test_chapters = set(order[: len(order) // 4])
    picked = {}
    for part, size in (("train", TRAIN), ("test", TEST)):
        pool = sorted({c for ch, texts in chapters.items() if (ch in test_chapters) == (part == "test") for c in texts})
        rng.shuffle(pool)
        named = [t for t in pool if spans[t]][: round(size * NAMED_SHARE)]
        plain = [t for t in pool if not spans[t]][: size - len(named)]
        if len(named) + len(plain) < size:
            raise EvalSetError(f"kjv-names: only {len(named) + len(plain)} {part} clauses")
        rows = named + plain
        rng.shuffle(rows)
        picked[part] = rows
    if set(picked["train"]) & set(picked["test"]):
        raise EvalSetError("kjv-names: a clause is in both train and test")
    folder = out_dir / "kjv-names"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"names_known": len(names)}
    for part, rows in picked.items():
        path = folder / f"{part}.jsonl"
        path.write_bytes("".join(json.dumps({"text": t, "entities": spans[t]}) + "\n" for t in rows).encode())
        record[part] = {"path": str(path), "texts": len(rows), "sha256": _sha256(path)}
    train_words = {m.group().lower() for t in picked["train"] for m in WORD.finditer(t)}
    test_entities = [t[e["start"]:e["end"]] for t in picked["test"] for e in spans[t]]
    record["test_entities"] = len(test_entities)
    record["test_entities_with_a_word_train_lacks"] = sum(
        any(w.lower() not in train_words for w in WORD.findall(e)) for e in test_entities)
    record["most_common_test_names"] = Counter(test_entities).most_common(8)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    try:
        record = build(Path(args.out))
    except EvalSetError as exc:
        print(f"tagged_sets: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
