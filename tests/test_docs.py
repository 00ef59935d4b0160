"""The docs name real files: every repository path README.md and docs/*.md mention exists, and a test named as
``tests/test_x.py::test_name`` is defined there (issue 15)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# top-level folders and files of the repository: a path in the docs that starts with one is a claim about this tree
TOP_LEVEL = ("pema_export/", "tests/", "docs/", "benchmarks/", "samples/", "targets/", "Makefile", "pyproject.toml",
             "constraints.txt", "package.json", "README.md")
PATH = re.compile(r"(?<![\w./-])((?:%s)[\w./-]*(?:::\w+)?)" % "|".join(re.escape(top) for top in TOP_LEVEL))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def named_paths(doc: Path) -> set[str]:
    text = doc.read_text(encoding="utf-8")
    paths = {match.rstrip(".") for match in PATH.findall(text)}
    for link in LINK.findall(text):  # markdown links are relative to the document
        if not re.match(r"[a-z]+:", link):
            paths.add(str((doc.parent / link).resolve().relative_to(REPO)))
    return paths


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_every_path_the_docs_name_exists(doc):
    missing = []
    for named in sorted(named_paths(doc)):
        path, _, test = named.partition("::")
        if not (REPO / path).exists():
            missing.append(named)
        elif test and not re.search(rf"^def {re.escape(test)}\(", (REPO / path).read_text(encoding="utf-8"), re.M):
            missing.append(named)
    assert not missing, f"{doc.name} names what does not exist: {', '.join(missing)}"


def test_every_module_the_readme_layout_names_exists():
    """README's Layout names files relative to the folder of its block (pema_export/, targets/, ...)."""
    text = (REPO / "README.md").read_text(encoding="utf-8").split("## Layout", 1)[1]
    block = [line for line in text.splitlines()[1:] if line.startswith("    ") or not line.strip()]
    folder, missing, seen = None, [], 0
    for line in block:
        top = re.match(r"    ([\w]+)/(?:\s|$)", line)
        if top:
            folder = REPO / top.group(1)
        # module and data file names, and sub-folders at the start of an entry ("oov/", "stages/")
        names = re.findall(r"(?<![\w./-])([\w-]+\.(?:py|toml|txt|mjs))\b", line) + re.findall(r"^      ([\w]+/)", line)
        for name in names:
            seen += 1
            if folder is None or not (any(folder.rglob(name.rstrip("/"))) or (folder / name).exists()):
                missing.append(f"{folder.name if folder else '?'}: {name}")
    assert seen > 40, "the Layout block was not found or not read"
    assert not missing, f"README's Layout names what does not exist: {', '.join(missing)}"


def test_the_path_finder_sees_what_the_docs_name():
    """The check above is only as good as its pattern: it must find the kinds of names the docs use."""
    readme = named_paths(REPO / "README.md")
    assert {"benchmarks/size_vs_plain.py", "docs/oov.md", "samples/app_texts.txt", "tests/js/tokenize.mjs"} <= readme
    oov = named_paths(REPO / "docs" / "oov.md")
    assert any("::" in name for name in oov)


def test_requires_python_is_what_the_code_imports():
    """tomllib is 3.11's: pyproject must not promise 3.10."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.11"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "PYTHON_MIN := 3.11" in makefile and re.search(r"^test: versions", makefile, re.M)
