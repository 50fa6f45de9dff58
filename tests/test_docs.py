"""Every document the code and the docs point at is in the repository: each `*.md` path named in
a source file, spec, script or document exists, each relative Markdown link (and its #anchor)
resolves, and nothing points outside the repository (a user's clone has only what is in it)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("sgmim", "service", "worker", "benchmarks", "examples", "deploy", "docs")
TOP_FILES = ("README.md", "Makefile", "docker-compose.yml", "pyproject.toml", ".dockerignore")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".mako", ".example"}
SKIP_PARTS = {"__pycache__", "out"}  # benchmarks/out: generated, git-ignored

MD_PATH = re.compile(r"[A-Za-z0-9_./$-]*[A-Za-z0-9_-]\.md\b")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
OUTSIDE = ".." + "/shared"
# Reports the benchmarks write into their output folder: named, but never part of the repository.
GENERATED = {"gpu_check.md"}


def text_files() -> list[Path]:
    files = [ROOT / name for name in TOP_FILES if (ROOT / name).is_file()]
    for top in SOURCE_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            parts = set(path.relative_to(ROOT).parts)
            if path.is_file() and not parts & SKIP_PARTS and (
                path.suffix in TEXT_SUFFIXES or path.name.endswith("Dockerfile")
            ):
                files.append(path)
    return files


FILES = text_files()
MD_NAMES = {p.name for p in FILES if p.suffix == ".md"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def resolves(source: Path, target: str) -> bool:
    """A path as a comment or document names it: from the repository root, from the naming
    file's folder, or (a bare file name) a document of that name somewhere in the repository."""
    if (ROOT / target).exists() or (source.parent / target).exists():
        return True
    return "/" not in target and target in MD_NAMES


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"\s", "-", text)


def anchors(doc: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+)$", doc.read_text(), re.M)}


def test_the_docs_exist_and_are_scanned():
    names = {rel(p) for p in FILES}
    assert {"docs/architecture.md", "docs/method.md", "docs/notes.md", "README.md"} <= names
    assert any(n.startswith("sgmim/models/") for n in names)


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_named_documents_exist(path):
    text = path.read_text(errors="replace")
    missing = sorted(
        name
        for name in set(MD_PATH.findall(text))
        if "$" not in name and not name.startswith("/") and name not in GENERATED
        and not resolves(path, name)
    )
    assert not missing, f"{rel(path)} names documents that are not in the repository: {missing}"


@pytest.mark.parametrize("path", FILES, ids=rel)
def test_nothing_points_outside_the_repository(path):
    assert OUTSIDE not in path.read_text(errors="replace"), f"{rel(path)} points at {OUTSIDE}"


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix == ".md"], ids=rel)
def test_markdown_links_resolve(path):
    broken = []
    for link in MD_LINK.findall(path.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, mailto:, ...
            continue
        target, _, anchor = link.partition("#")
        doc = (path.parent / target).resolve() if target else path
        if not doc.exists() or (anchor and doc.suffix == ".md" and anchor not in anchors(doc)):
            broken.append(link)
    assert not broken, f"{rel(path)} has broken links: {broken}"
