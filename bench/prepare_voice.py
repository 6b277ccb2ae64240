"""Corpora of the marketing-voice ("write like us") benchmark, from local git mirrors, as plain-text JSON Lines.

Brand: the 18F blog (content/posts/*.md, US public domain + CC0); generic, the "not the brand" class of the style
check: the Rust blog (content/*.md, content/<slug>/index.md; MIT/Apache-2.0). Writes, deterministically
(rows sorted by path, gzip mtime 0):
    bench/data/voice/{brand,generic}.jsonl.gz, NOTICE.md and the licence texts;
    src/tunelab/examples/marketing/posts.jsonl (~25 18F posts for the shipped recipe), NOTICE.md, LICENSE.18f.md.
    python bench/prepare_voice.py [--mirrors /work/.mirror]
"""

from __future__ import annotations

import argparse
import gzip
import html
import io
import json
import random
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "data" / "voice"
EXAMPLE = ROOT / "src" / "tunelab" / "examples" / "marketing"
BRAND_REPO, BRAND_COMMIT = "18F+18f.gsa.gov", "0a55c75e6d9bc71c80136a3867dac52356177443"
GENERIC_REPO, GENERIC_COMMIT = "rust-lang+blog.rust-lang.org", "0243724c2e50ad2b7ebd3d9dbc7cd88aed7605a3"
MAX_GZ_BYTES = 1_900_000  # keep each shipped .gz under ~2 MB
SAMPLE_POSTS, SAMPLE_MAX_WORDS, SAMPLE_MAX_BYTES = 25, 700, 250_000
HOLDOUT_YEAR = 2021  # bench/quality_voice.py holds these out; the shipped sample takes none of them

Post = dict[str, Any]


def git(gitdir: Path, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={gitdir}", *args], check=True, capture_output=True,
                          text=True).stdout


def show(gitdir: Path, commit: str, path: str) -> str:
    # per file: `git archive` of the 18F tree fails on a large asset missing from the mirror
    return git(gitdir, "show", f"{commit}:{path}")


# --- markdown -> plain text ----------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_TEMPLATE = re.compile(r"\{%-?.*?-?%\}|\{\{.*?\}\}|\{#.*?#\}", re.S)  # Nunjucks/Liquid/Tera tags
_BLOCK_HTML = re.compile(r"<(script|style|iframe|svg)\b.*?</\1\s*>|<!--.*?-->", re.S | re.I)
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)|!\[[^\]]*\]\[[^\]]*\]")
_LINK = re.compile(r"\[([^\]]*)\]\((?:[^()]|\([^)]*\))*\)")  # urls may hold one level of parentheses
_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_LINK_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*\S.*$", re.M)
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_EMPHASIS = [re.compile(r"\*\*(.+?)\*\*"), re.compile(r"__(.+?)__"),
             re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), re.compile(r"(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)")]
_SHORTCUT_LINK = re.compile(r"\[([^\]\n]+)\](?!\()")  # `[text]`, its definition dropped
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")  # markdown backslash escapes: any ASCII punctuation
_HIDE = 0xE000  # escaped characters wait in the private-use area while emphasis marks are removed
_LIST_ITEM = re.compile(r"^\s*(?:[*+-]|\d+[.)])\s+")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")


def markdown_text(md: str) -> str:
    """Prose of a markdown post: code, images, template tags and HTML dropped, links reduced to their text,
    hard-wrapped paragraphs joined; paragraphs separated by a blank line, list items one per line."""
    t = _FENCE.sub("", md.replace("\r\n", "\n"))
    t = _BLOCK_HTML.sub("", t)
    t = _IMAGE.sub("", t)
    t = _LINK.sub(r"\1", t)  # before the template tags go: `[text]({{ "/x/" | url }})` keeps its text
    t = _REF_LINK.sub(r"\1", t)
    t = _LINK_DEF.sub("", t)
    t = _TEMPLATE.sub("", t)
    t = _TAG.sub("", t)
    paragraphs = []
    for block in re.split(r"\n\s*\n", t):
        lines: list[str] = []
        for raw in block.split("\n"):
            line = re.sub(r"\\$", "", raw.strip()).strip()  # a trailing backslash is a hard line break
            if not line or _RULE.match(line) or line.startswith("|"):  # rules and tables carry no prose
                continue
            line = re.sub(r"^(>\s*)+", "", line)
            line = re.sub(r"^#{1,6}\s*", "", line).rstrip("#").strip()
            if _LIST_ITEM.match(line):
                lines.append("- " + _LIST_ITEM.sub("", line))
            elif lines:
                lines[-1] += " " + line
            else:
                lines.append(line)
        text = _ESCAPE.sub(lambda m: chr(_HIDE + ord(m.group(1))), "\n".join(lines))
        text = _SHORTCUT_LINK.sub(r"\1", text)  # after joining: `[text]` may span a line break
        for pat in _EMPHASIS:
            text = pat.sub(r"\1", text)
        text = re.sub("[\ue000-\ue07f]", lambda m: chr(ord(m.group()) - _HIDE), text.replace("`", ""))
        text = html.unescape(text)
        text = re.sub(r"[ \t\u00a0]+", " ", text).strip()
        if re.search(r"\w", text):
            paragraphs.append(text)
    return "\n\n".join(paragraphs)


def front_matter(doc: str, fence: str) -> tuple[str, str]:
    if not doc.startswith(fence):
        return "", doc
    end = doc.find("\n" + fence, len(fence))
    return doc[len(fence):end], doc[end + len(fence) + 1:]


def clean_title(s: Any) -> str:
    return re.sub(r"\s+", " ", _LINK.sub(r"\1", html.unescape(str(s or "")))).strip()


# --- corpora -------------------------------------------------------------------------------------

def brand_posts(gitdir: Path) -> tuple[list[Post], list[str]]:
    """The 18F posts, guest posts dropped (author slug with 'guest', or an editor's note saying so)."""
    names = git(gitdir, "ls-tree", "--name-only", BRAND_COMMIT, "content/posts/").split()
    posts, guests = [], []
    for path in sorted(n for n in names if n.endswith(".md")):
        meta_text, body_md = front_matter(show(gitdir, BRAND_COMMIT, path), "---")
        # trailing tabs in a few files are not valid YAML
        meta = yaml.safe_load(re.sub(r"[ \t]+$", "", meta_text, flags=re.M)) or {}
        authors = [str(a) for a in meta.get("authors") or []]
        if any("guest" in a for a in authors) or re.search(r"guest (post|blogger)", body_md[:800], re.I):
            guests.append(path)
            continue
        # the front matter's date (the publication date) wins over the file name's, as in the site's build
        date = str(meta.get("date") or Path(path).name[:10])[:10]
        body = markdown_text(body_md)
        posts.append({"title": clean_title(meta.get("title")), "excerpt": markdown_text(str(meta.get("excerpt") or "")),
                      "tags": [str(t) for t in meta.get("tags") or []], "date": date, "body": body, "path": path})
    return posts, guests


def generic_posts(gitdir: Path) -> tuple[list[Post], int]:
    """The Rust blog's main posts, without the `Announcing Rust 1.x` release template posts."""
    names = git(gitdir, "ls-tree", "-r", "--name-only", GENERIC_COMMIT, "content/").split()
    files = [n for n in names if re.fullmatch(r"content/[^/]+\.md", n) and not n.endswith("_index.md")]
    files += [n for n in names if re.fullmatch(r"content/[^/]+/index\.md", n)]
    posts, releases = [], 0
    for path in sorted(files):
        meta_text, body_md = front_matter(show(gitdir, GENERIC_COMMIT, path), "+++")
        meta = tomllib.loads(meta_text)
        title = clean_title(meta.get("title"))
        if (meta.get("extra") or {}).get("release") or re.match(r"Announcing Rust 1\.\d+", title):
            releases += 1
            continue
        m = re.match(r"(\d{4})/(\d{2})/(\d{2})/", str(meta.get("path") or ""))
        posts.append({"title": title, "excerpt": markdown_text(str(meta.get("description") or "")),
                      "tags": [], "date": "-".join(m.groups()) if m else "", "body": markdown_text(body_md),
                      "path": path})
    return posts, releases


def gz_jsonl(rows: list[Post]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        for r in rows:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    return buf.getvalue()


def fit_gz(rows: list[Post], seed: int = 0) -> tuple[bytes, list[Post]]:
    """All rows if they fit MAX_GZ_BYTES, else the largest seeded sample that does (kept in path order)."""
    keep = sorted(rows, key=lambda r: r["path"])
    data = gz_jsonl(keep)
    if len(data) > MAX_GZ_BYTES:
        order = list(range(len(keep)))
        random.Random(seed).shuffle(order)
        n = int(len(keep) * MAX_GZ_BYTES / len(data))
        while True:
            sample = [keep[i] for i in sorted(order[:n])]
            data = gz_jsonl(sample)
            if len(data) <= MAX_GZ_BYTES:
                return data, sample
            n -= max(1, n // 50)
    return data, keep


def words(posts: list[Post]) -> int:
    return sum(len(p["body"].split()) for p in posts)


def sample_rows(posts: list[Post], seed: int = 0) -> list[Post]:
    """About 25 pre-2021 posts of 250-700 words (short enough to fit model.max_length whole), none with an `@`
    other than GSA's own addresses: social-media handles and outside contacts are published, but a shipped sample
    needn't carry them."""
    pool = [p for p in posts if p["date"] < str(HOLDOUT_YEAR) and 250 <= len(p["body"].split()) <= SAMPLE_MAX_WORDS
            and not re.search(r"@(?!gsa\.gov)", p["body"], re.I)]
    random.Random(seed).shuffle(pool)
    chosen: list[Post] = []
    size = 0
    for p in pool:
        n = len(json.dumps({"text": f"{p['title']}\n\n{p['body']}"}, ensure_ascii=False).encode()) + 1
        if len(chosen) == SAMPLE_POSTS or size + n > SAMPLE_MAX_BYTES:
            break
        chosen.append(p)
        size += n
    return sorted(chosen, key=lambda p: p["path"])


def write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes)")


CLEANING = """\
Cleaning (bench/prepare_voice.py): front matter parsed and stripped (YAML on 18F, TOML on Rust); fenced code
blocks, HTML comments/scripts, images and Nunjucks/Liquid/Tera `{{ ... }}`, `{% ... %}` tags removed; markdown
links (`[text](url)`, `[text][ref]`) reduced to their text and link definitions dropped; HTML tags dropped
(their text kept); heading marks, emphasis marks, backticks, block quotes, horizontal rules and table lines
removed; hard-wrapped lines joined into paragraphs (separated by a blank line; list items kept as `- ` lines);
HTML entities decoded."""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirrors", default="/work/.mirror")
    a = ap.parse_args()
    brand_dir = Path(a.mirrors) / BRAND_REPO / "repo"
    generic_dir = Path(a.mirrors) / GENERIC_REPO / "repo"
    brand, guests = brand_posts(brand_dir)
    generic_all, releases = generic_posts(generic_dir)
    brand_gz, brand = fit_gz(brand)
    generic_gz, generic = fit_gz(generic_all)
    held = sum(p["date"] >= str(HOLDOUT_YEAR) for p in brand)
    write(OUT / "brand.jsonl.gz", brand_gz)
    write(OUT / "generic.jsonl.gz", generic_gz)
    write(OUT / "LICENSE.18f.md", show(brand_dir, BRAND_COMMIT, "LICENSE.md"))
    write(OUT / "LICENSE.rust-MIT", show(generic_dir, GENERIC_COMMIT, "LICENSE-MIT"))
    write(OUT / "LICENSE.rust-APACHE", show(generic_dir, GENERIC_COMMIT, "LICENSE-APACHE"))
    subsampled = (f"a seeded sample of {len(generic)} of the {len(generic_all)} posts (to keep the file under 2 MB)"
                  if len(generic) < len(generic_all) else f"all {len(generic)} posts")
    write(OUT / "NOTICE.md", f"""\
# Marketing-voice benchmark corpora (bench/quality_voice.py)

Rows: title, excerpt, tags, date (YYYY-MM-DD), body (plain text), path (in the source repository); sorted by path.

## brand.jsonl.gz: the 18F blog

Source: github.com/18F/18f.gsa.gov @ {BRAND_COMMIT}, `content/posts/*.md`.
{len(brand)} posts, {words(brand):,} words in their bodies ({held} dated {HOLDOUT_YEAR} or later: the benchmark's
held-out posts). {len(guests)} guest posts left out: {", ".join(Path(g).name for g in guests)}.
The date is the front matter's `date` where there is one (the site publishes it so), else the file name's.

Licence: as a work of the United States government, in the public domain within the United States; copyright and
related rights waived worldwide through CC0 1.0 Universal. Full text: `LICENSE.18f.md`.

## generic.jsonl.gz: the Rust blog (the "not the brand" class of the style check)

Source: github.com/rust-lang/blog.rust-lang.org @ {GENERIC_COMMIT}, `content/*.md` and `content/<slug>/index.md`
(the main blog; Inside Rust left out). {releases} `Announcing Rust 1.x` release posts (a fixed template) left out;
{subsampled}: {words(generic):,} words. The excerpt is the front matter's `description`; the date comes from
its `path`; there are no tags.

Licence: MIT or Apache-2.0 ("Like everything in Rust, the blog is licensed MIT/Apache 2.0", the repository's
README). Full texts: `LICENSE.rust-MIT`, `LICENSE.rust-APACHE`.

{CLEANING}
""")
    sample = sample_rows(brand)
    write(EXAMPLE / "posts.jsonl", "".join(json.dumps({"text": f"{p['title']}\n\n{p['body']}"}, ensure_ascii=False)
                                           + "\n" for p in sample))
    write(EXAMPLE / "LICENSE.18f.md", show(brand_dir, BRAND_COMMIT, "LICENSE.md"))
    listing = "\n".join(f"- {p['date']}  {p['title']}" for p in sample)
    write(EXAMPLE / "NOTICE.md", f"""\
# Marketing voice sample (configs/marketing/voice-completion.yaml)

`posts.jsonl` holds {len(sample)} posts of the 18F blog (github.com/18F/18f.gsa.gov @ {BRAND_COMMIT},
`content/posts/`), one row each: `{{"text": "<title>\\n\\n<body>"}}` in plain text, so tunelab trains on every
token (task completion). A seeded choice among the posts dated before {HOLDOUT_YEAR} with 250-{SAMPLE_MAX_WORDS} words;
guest posts and posts with an `@` other than GSA's addresses (handles, outside contacts) left out. Written by
`bench/prepare_voice.py`.

Licence: as a work of the United States government, in the public domain within the United States; copyright and
related rights waived worldwide through CC0 1.0 Universal. Full text: `LICENSE.18f.md` beside this file.

{CLEANING}

Posts:
{listing}
""")
    print(f"brand: {len(brand)} posts, {words(brand):,} words, {held} from {HOLDOUT_YEAR} on, {len(guests)} guest "
          f"posts dropped; generic: {len(generic)} of {len(generic_all)} posts, {words(generic):,} words, {releases} "
          f"release posts dropped; sample: {len(sample)} posts")


if __name__ == "__main__":
    main()
