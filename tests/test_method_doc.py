"""The repository stands alone: its method is docs/method.md, and every citation names a section that exists."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ("HSAKD" + ".md", "shared" + "/")  # spelled in parts so this file does not match itself
CITATION = re.compile(r'docs/method\.md, "([^"]+)"')


def repo_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored text files (what a clone or a fresh commit would hold)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    files = [ROOT / name for name in listed if (ROOT / name).is_file()]
    assert len(files) > 50
    return files


def text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (UnicodeDecodeError, OSError):
        return None  # binary (plots, benchmark artifacts)


def test_no_file_cites_a_document_outside_the_repository() -> None:
    offenders = [f"{path.relative_to(ROOT)}: {needle}" for path in repo_files() if (body := text(path))
                 for needle in OUTSIDE if needle in body]
    assert not offenders, offenders


def test_every_method_citation_names_a_section_of_docs_method() -> None:
    headings = set(re.findall(r"^## (.+)$", (ROOT / "docs" / "method.md").read_text(), re.M))
    cited = {(path.relative_to(ROOT), section) for path in repo_files() if (body := text(path))
             for section in CITATION.findall(body)}
    assert cited, "nothing cites docs/method.md"
    missing = sorted((str(p), s) for p, s in cited if s not in headings)
    assert not missing, missing
