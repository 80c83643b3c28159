"""The README stays short, names the exact command CI runs, links every docs page, and no
link in README or docs/ is broken; no file cites the working notes that are not shipped."""
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SKIPPED_DIRS = {".git", "__pycache__", ".pytest_cache", "runs", "predictions", "exports"}


def _text(path: pathlib.Path) -> str:
    return path.read_text(encoding="utf-8")


def _outside_code(text: str) -> str:
    """Markdown without fenced code blocks (links and headings there do not count)."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set:
    text = _outside_code(_text(path))
    found = {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}
    found |= set(re.findall(r'<a id="([^"]+)"', text))
    return found


def test_ci_runs_the_readme_test_command():
    ci = _text(ROOT / ".ci" / "run")
    test_command = re.search(r"python3 -m pytest [^\n`]*", _text(README)).group(0).strip()
    ci_command = re.search(r"python3 -m pytest [^\n]*", ci).group(0).strip()
    assert test_command == ci_command == "python3 -m pytest -n 2 -q tests"


def test_readme_is_short():
    assert len(_text(README).splitlines()) <= 200


def test_every_docs_page_is_linked_from_the_readme():
    linked = {pathlib.Path(os.path.normpath(ROOT / m.split("#")[0]))
              for m in LINK.findall(_outside_code(_text(README)))}
    assert len(DOCS) >= 10
    missing = [p.name for p in DOCS if p not in linked]
    assert missing == []


@pytest.mark.parametrize("page", [README] + DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(_outside_code(_text(page))):
        if re.match(r"^[a-z]+:", target):          # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = page if not path else pathlib.Path(os.path.normpath(page.parent / path))
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT)}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading or anchor #{anchor} in {dest.name}")
    assert broken == []


def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n[ok](#a-title) [bad](#missing) [gone](nowhere.md)\n")
    assert "a-title" in anchors(page)
    assert "missing" not in anchors(page)
    assert not (tmp_path / "nowhere.md").exists()


def test_no_file_cites_the_unshipped_notes():
    word = "REFER" + "ENCE"       # spelled in two parts so this file does not match itself
    hits = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            path = pathlib.Path(dirpath) / name
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue                          # binary files (PNG results, weights)
            hits += [f"{path.relative_to(ROOT)}:{i + 1}" for i, line in
                     enumerate(text.splitlines()) if word in line]
    assert hits == []
