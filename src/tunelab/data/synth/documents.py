"""Documents -> plain text -> chunks of about N words on paragraph boundaries, overlapping so that a fact split by
a boundary is whole in one of the two chunks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import TunelabError

SUFFIXES = (".txt", ".md", ".markdown", ".pdf", ".html", ".htm")
CHUNK_WORDS = 200
OVERLAP_WORDS = 40
_BLOCKS = ("p", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "br", "tr", "table", "pre",
           "blockquote", "section", "article", "header", "footer", "dd", "dt")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class DocumentError(TunelabError):
    """A documents folder with nothing readable in it."""


@dataclass
class Document:
    name: str  # path relative to the folder
    text: str


@dataclass
class Chunk:
    id: str  # "file#index"
    file: str
    index: int
    text: str


def _pdf(path: Path) -> str:
    from pypdf import PdfReader

    return "\n\n".join(page.extract_text() or "" for page in PdfReader(path).pages)


def _html(path: Path) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_text(encoding="utf-8", errors="replace"), "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "head"]):
        tag.decompose()
    for tag in soup.find_all(_BLOCKS):  # blocks become paragraphs; inline tags stay inside their sentence
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    return soup.get_text()


def read_text(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _pdf(path)
    if suffix in (".html", ".htm"):
        return _html(path)
    return path.read_text(encoding="utf-8", errors="replace")


def read_documents(folder: str | Path) -> tuple[list[Document], dict[str, str]]:
    """Every readable document under folder (recursively, in name order), and the files skipped -> why."""
    root = Path(folder)
    if not root.exists():
        raise DocumentError(f"{root}: no such file or folder: give --documents a folder of .txt, .md, .pdf or "
                            ".html files")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                 and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    docs, skipped = [], {}
    for f in files:
        name = f.name if root.is_file() else str(f.relative_to(root))
        try:
            text = read_text(f)
        except Exception as exc:  # noqa: BLE001 - a broken PDF is skipped and reported, the others still used
            skipped[name] = f"can't read it: {type(exc).__name__}: {str(exc)[:120]}"
            continue
        if not text.strip():
            skipped[name] = "no text in it (a scanned PDF needs OCR first)"
            continue
        docs.append(Document(name, text))
    if not docs:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise DocumentError(f"{root}: no readable {', '.join(SUFFIXES)} files{' (' + why + ')' if why else ''}")
    return docs, skipped


def _units(text: str, size: int) -> list[str]:
    """Paragraphs (blank-line separated, inner line breaks joined); one longer than size words is cut at sentence
    ends, and a sentence longer than that at size words."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para.split()) <= size:
            out.append(para)
            continue
        for sentence in _SENTENCE_END.split(para):
            words = sentence.split()
            out += [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
    return out


def chunk(doc: Document, words: int = CHUNK_WORDS, overlap: int = OVERLAP_WORDS) -> list[Chunk]:
    """Chunks of about `words` words made of whole paragraphs; each starts with the last paragraphs (up to
    `overlap` words) of the one before."""
    chunks: list[list[str]] = []
    cur: list[str] = []
    n = 0
    for unit in _units(doc.text, words):
        size = len(unit.split())
        if cur and n + size > words:
            chunks.append(cur)
            keep: list[str] = []
            m = 0
            for u in reversed(cur):
                m += len(u.split())
                if m > overlap:
                    break
                keep.insert(0, u)
            cur, n = keep, sum(len(u.split()) for u in keep)
        cur.append(unit)
        n += size
    if cur:
        chunks.append(cur)
    return [Chunk(f"{doc.name}#{i}", doc.name, i, "\n\n".join(c)) for i, c in enumerate(chunks)]
