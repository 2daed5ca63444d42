"""Citations of the docs point somewhere: every ``docs/X.md`` / ``X.md#anchor`` named in the code, the recipes and the
docs resolves to a shipped file and one of its headings, and nothing cites the design documents that do not ship."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CODE_DIRS = ("lgiformer", "benchmarks", "scripts", "data_lists", "tests", "finetune", "pretrain")
CODE_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".txt"}

# A cited markdown file: docs/PATH.md, another/dir/NAME.md, or a bare NAME.md (looked up in docs/ first), with an
# optional #anchor. Not preceded by a path character, so "data_lists/README.md" is read whole.
CITATION = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)(#[\w-]+)?")
MD_LINK = re.compile(r"\]\(([^)\s]+?\.md)?(#[\w-]+)?\)")
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
FENCE = re.compile(r"^\s*(```|~~~)")


def github_anchor(heading: str) -> str:
    """GitHub's heading slug: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file defines: heading slugs (with GitHub's -1, -2 suffixes for repeats, headings in
    code blocks skipped) and explicit ``<a id=...>`` / ``<a name=...>`` targets."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        found.update(HTML_ANCHOR.findall(line))
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_anchor(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def resolve(name: str, base: Path) -> Path | None:
    """The file a citation names: ``docs/...`` from the repository root, a bare upper-case name from docs/ (the
    code's short form ``AU_METHODS.md#...``), anything else relative to ``base`` and then to the root."""
    if name.startswith("docs/"):
        return ROOT / name if (ROOT / name).is_file() else None
    candidates = [base / name, ROOT / name]
    if "/" not in name and name[0].isupper():
        candidates.insert(0, DOCS / name)
    return next((c for c in candidates if c.is_file()), None)


def check_citations(text: str, where: str, base: Path = ROOT) -> list[str]:
    """Problems with the markdown files and anchors that ``text`` cites (plain mentions and markdown links)."""
    problems = []
    refs = [(m.group(1), m.group(2)) for m in CITATION.finditer(text)]
    refs += [(m.group(1), m.group(2)) for m in MD_LINK.finditer(text) if m.group(1) is None and m.group(2)]
    for name, anchor in dict.fromkeys(refs):
        if name is None:  # [text](#anchor): an anchor of the file itself
            target = Path(where)
        else:
            if "://" in name:
                continue
            target = resolve(name, base)
            if target is None:
                problems.append(f"{where}: cites {name}, which does not exist")
                continue
        if anchor and anchor[1:] not in anchors(target):
            problems.append(f"{where}: cites {name or target.name}{anchor}, but {target.name} has no such heading")
    return problems


def _files(dirs, suffixes):
    for d in dirs:
        for path in sorted((ROOT / d).rglob("*")):
            if path.is_file() and path.suffix in suffixes and "fixtures" not in path.parts:
                yield path


def test_anchor_slugs_follow_github():
    assert github_anchor("U1. Rates and weights") == "u1-rates-and-weights"
    assert github_anchor("Shared rules U1-U6") == "shared-rules-u1-u6"
    assert github_anchor("AU methods: what `lgiformer/au` implements") == "au-methods-what-lgiformerau-implements"
    assert github_anchor("[Link](x.md) text") == "link-text"


def test_checker_reports_missing_files_and_anchors(tmp_path):
    """The check itself can fail: a missing doc, a missing heading and a bad link are each reported."""
    text = ("see docs/NO_SUCH_DOC.md and docs/AU_METHODS.md#no-such-heading, fine: docs/AU_METHODS.md#label-token-head, "
            "AU_METHODS.md#monet and docs/REFERENCE.md#defect-3; a link [x](AU.md#not-there)")
    problems = check_citations(text, "snippet", base=DOCS)
    assert len(problems) == 3, problems
    assert any("NO_SUCH_DOC.md" in p for p in problems)
    assert any("#no-such-heading" in p for p in problems)
    assert any("#not-there" in p for p in problems)
    doc = tmp_path / "X.md"
    doc.write_text("# Title\n```\n# not a heading\n```\n## Part\n## Part\n<a id=\"custom\"></a>\n")
    assert anchors(doc) == {"title", "part", "part-1", "custom"}


def test_code_citations_resolve():
    problems = []
    for path in _files(CODE_DIRS, CODE_SUFFIXES):
        if path == Path(__file__).resolve():
            continue
        rel = path.relative_to(ROOT).as_posix()
        problems += check_citations(path.read_text(encoding="utf-8"), rel, base=path.parent)
    assert not problems, "\n".join(problems)


def test_docs_links_resolve():
    problems = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        problems += check_citations(path.read_text(encoding="utf-8"), path.as_posix(), base=path.parent)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("pattern, docs, why", [
    (r"specs/|AU_HEADS|REFERENCE_MAE_DFER|/work/shared", True, "cites a design document that does not ship"),
    (r"§", True, "uses section marks of a document that does not ship"),
    (r"REFERENCE defect", True, "cites a reference defect by its old label; use docs/REFERENCE.md#defect-N"),
    (r"\bTH (?:eqs?\.|§|Table|ch\.)|\bFT eqs?\.|\bMLT (?:eqs?\.|§)", False,
     "cites a paper's own numbering; cite the section of docs/AU_METHODS.md"),
])
def test_no_unshipped_citations(pattern, docs, why):
    rx = re.compile(pattern)
    files = [*_files(CODE_DIRS, CODE_SUFFIXES), *([ROOT / "README.md", *DOCS.glob("*.md")] if docs else [])]
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}"
            for p in files if p != Path(__file__).resolve()
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if rx.search(line)]
    assert not hits, f"{why}:\n" + "\n".join(hits)


def test_au_labels_are_defined_where_used():
    """Files under lgiformer/ that use the short labels of docs/AU_METHODS.md (U1..U6, [ENG], T-xx test IDs) cite
    that file, and the labels exist there."""
    methods = (DOCS / "AU_METHODS.md").read_text(encoding="utf-8")
    for n in range(1, 7):
        assert re.search(rf"^### U{n}\. ", methods, re.M), f"AU_METHODS.md lost its U{n} heading"
    assert "**[ENG]**" in methods
    label = re.compile(r"\bU[1-6]\b|\[ENG\b|\bT-[A-F][0-9]")
    uncited = [p.relative_to(ROOT).as_posix() for p in _files(("lgiformer", "benchmarks", "scripts"), {".py"})
               if label.search(p.read_text(encoding="utf-8")) and "AU_METHODS.md" not in p.read_text(encoding="utf-8")]
    assert not uncited, f"these use AU_METHODS.md labels without citing it: {uncited}"
    test_ids = set(re.findall(r"\bT-[A-F][0-9]+\b", methods))
    for path in _files(("tests",), {".py"}):
        for first, last in re.findall(r"\bT-([A-F][0-9]+)(?:\.\.([A-F]?[0-9]+))?", path.read_text(encoding="utf-8")):
            assert f"T-{first}" in test_ids, f"{path.name} names T-{first}, which AU_METHODS.md does not list"
