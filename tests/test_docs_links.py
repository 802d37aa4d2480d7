"""The documentation holds together: every relative link resolves (to a file, and an #anchor to a heading of it),
the README stays short and gives the test command `.ci/run` runs, the docs describe the code as it is rather than how
it got there, and every quoted figure names its row of benchmarks/results/INDEX.md."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INDEX = ROOT / "benchmarks" / "results" / "INDEX.md"
DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md"),
               ROOT / "benchmarks" / "README.md", INDEX, *(ROOT / "cluster").glob("README.md")])
# Pages that describe the code as it is (the changelog is history by design; benchmarks/ speaks of a script's
# "rounds", its own term).
CURRENT = [p for p in DOCS if p.name not in ("CHANGELOG.md", "INDEX.md") and p.parent.name != "benchmarks"]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def prose(text: str) -> str:
    """The text with fenced code blocks and inline code removed: links and words inside code are not prose."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    found, seen = set(), {}
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found | set(HTML_ANCHOR.findall(text))


def links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading or anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, broken


def test_the_link_checker_sees_links_headings_and_anchors() -> None:
    """Guards the checks above against passing because they match nothing."""
    assert slug("Trials share the frozen teacher's outputs: `tune.share_teacher`") == \
        "trials-share-the-frozen-teachers-outputs-tuneshare_teacher"
    assert "docs/img/mlflow_ui.png" in links(ROOT / "README.md")
    assert sum(len(links(p)) for p in DOCS) > 40
    assert "g1" in anchors(INDEX) and "the-quickstart" in anchors(ROOT / "docs" / "performance.md")


def test_readme_is_at_most_250_lines() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines; move reference material to docs/"


def test_ci_runs_the_full_suite_command_the_readme_gives() -> None:
    command = "python -m pytest tests -q"
    readme_blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    assert any(line.strip() == command for block in readme_blocks for line in block.splitlines())
    ci_commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    assert ci_commands[-1] == command


# Words that tell how the project got here rather than what it is. Whole words and phrases only, in prose (not in
# code, where `--rounds` is a flag), so "rounded", "earlier than the schedule allows" or "a later --set" stay fine.
HISTORY = re.compile(
    r"\bsessions?\b|\brounds?\b|\bearlier (?:attempt|run|version|release|measurement)s?\b"
    r"|\bprevious (?:release|version|attempt|run)s?\b|\btried and\b|\breverted\b|\b(?:this|that) change\b"
    r"|\bbefore this\b|\bsince then\b|\bno longer\b|\bnot kept\b",
    re.I,
)


@pytest.mark.parametrize("page", CURRENT, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_describe_the_code_as_it_is_not_its_history(page: Path) -> None:
    hits = [(n, m.group(0)) for n, line in enumerate(prose(page.read_text()).splitlines(), 1)
            for m in HISTORY.finditer(line)]
    assert not hits, hits


def test_history_check_catches_what_it_is_for() -> None:
    assert HISTORY.search("measured in a later session") and HISTORY.search("two rounds, alternating")
    assert HISTORY.search("side by side with the previous release") and HISTORY.search("tried and not kept")
    assert not HISTORY.search("CPUs, rounded, as threads; a rung earlier than the schedule allows")


def index_rows() -> dict[str, str]:
    """INDEX.md's rows: id -> the row's text."""
    rows = re.findall(r"^\|\s*(?:<a id=\"[^\"]+\"></a>)?([A-Z]\d+)\s*\|(.*)$", INDEX.read_text(), re.M)
    assert rows, "INDEX.md has no rows"
    return dict(rows)


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``: each a list of rows (header first, separator dropped), each a list of cells."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def test_every_figure_of_the_performance_page_is_a_table_row_naming_its_index_row() -> None:
    rows = index_rows()
    page = (ROOT / "docs" / "performance.md").read_text()
    found = tables(page)
    assert len(found) >= 5
    for table in found:
        header, *body = table
        assert "INDEX" in header, f"a table without an INDEX column: {header}"
        column = header.index("INDEX")
        for row in body:
            ids = row[column].split(", ")
            assert all(re.fullmatch(r"[A-Z]\d+", i) and i in rows for i in ids), f"{row}: no INDEX row {row[column]!r}"


def test_every_index_citation_in_the_docs_names_an_existing_row() -> None:
    rows = index_rows()
    cited = {m for page in DOCS for m in re.findall(r"\bINDEX ([A-Z]\d+)\b", page.read_text())}
    cited |= {a.upper() for page in DOCS for a in re.findall(r"INDEX\.md#([a-z]\d+)\b", page.read_text())}
    assert cited and cited <= set(rows), sorted(cited - set(rows))


def test_every_result_file_is_indexed_and_every_indexed_log_exists() -> None:
    indexed = set(re.findall(r"\]\(([^)#]+)\)", INDEX.read_text()))
    results = INDEX.parent
    files = {str(p.relative_to(results)) for p in results.rglob("*") if p.is_file() and p != INDEX}
    assert files - indexed == set(), f"logs no figure cites (delete them or cite them): {sorted(files - indexed)}"
    logs = {name for name in indexed if not name.startswith("..")}
    assert all((results / name).is_file() for name in logs)
