"""preprocess_data and train_tokenizer CLIs (sentencepiece): Megatron-LM byte identity, inputs, errors."""
from __future__ import annotations

import filecmp
import gzip
import json
import os
import re

import numpy as np
import pytest
import sentencepiece

from megatron_patch.cli import preprocess_data, train_tokenizer
from megatron_patch.data import preprocess as preprocess_module
from megatron_patch.data.indexed_writer import IndexedDatasetWriter, optimal_dtype
from tests._data_helpers import synthetic_documents, tiny_tokenizer, write_jsonl


def megatron_lm_reference(prefix: str, lines: list[str], model: str, keys: list[str],
                          append_eod: bool) -> None:
    """What Megatron-LM's preprocess_data.py (Llama2Tokenizer, megatron.core.tokenizers) writes:
    its Encoder.encode loop feeding megatron-core's IndexedDatasetBuilder."""
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    builders = {key: IndexedDatasetBuilder(f"{prefix}_{key}_document.bin",
                                           dtype=DType.optimal_dtype(sp.get_piece_size()))
                for key in keys}
    for line in lines:
        data = json.loads(line)
        for key in keys:
            text = data[key]
            doc_ids, lengths = [], []
            for sentence in (text if isinstance(text, list) else [text]):
                ids = sp.encode_as_ids(sentence)
                if len(ids) > 0:
                    doc_ids.extend(ids)
                    lengths.append(len(ids))
            if len(doc_ids) > 0 and append_eod:
                doc_ids.append(sp.eos_id())
                lengths[-1] += 1
            builders[key].add_document(doc_ids, lengths)
    for key in keys:
        builders[key].finalize(f"{prefix}_{key}_document.idx")


def _lines(num_documents: int, seed: int) -> list[str]:
    texts = synthetic_documents(num_documents, seed=seed)
    lines = []
    for i, text in enumerate(texts):
        record = {"id": i, "text": text, "title": text[:20]}
        if i % 17 == 3:
            record["text"] = ""  # empty document: an index entry without sequences
        if i % 13 == 5:
            record["text"] = [text[:30], "", text[30:]]  # pre-split sentences
        lines.append(json.dumps(record, ensure_ascii=i % 2 == 0))
    return lines


def _same_files(a: str, b: str) -> bool:
    return all(filecmp.cmp(f"{a}.{ext}", f"{b}.{ext}", shallow=False) for ext in ("bin", "idx"))


@pytest.mark.parametrize("workers,append_eod", [(1, True), (2, False)])
def test_byte_identical_to_megatron_lm(tmp_path, monkeypatch, workers, append_eod):
    monkeypatch.setattr(preprocess_module, "CHUNK_BYTES", 2048)  # many chunks, split mid-file
    model = tiny_tokenizer()
    lines = _lines(300, seed=workers)
    half = len(lines) // 2
    write_path = tmp_path / "part1.jsonl"
    write_path.write_text("\n".join(lines[:half]) + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "part2.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[half:]))  # no trailing newline
    argv = ["--input", str(tmp_path / "part*.jsonl*"), "--output-prefix", str(tmp_path / "ours"),
            "--tokenizer-model", model, "--json-keys", "text", "title", "--workers", str(workers),
            "--no-progress"] + (["--append-eod"] if append_eod else [])
    assert preprocess_data.main(argv) == 0
    megatron_lm_reference(str(tmp_path / "ref"), lines, model, ["text", "title"], append_eod)
    for key in ("text", "title"):
        assert _same_files(str(tmp_path / f"ours_{key}_document"), str(tmp_path / f"ref_{key}_document"))

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(str(tmp_path / "ours_text_document"))
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    first = sp.encode_as_ids(json.loads(lines[0])["text"]) + ([sp.eos_id()] if append_eod else [])
    assert dataset[0].tolist() == first and dataset[0].dtype == np.uint16
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_plain_text_equals_jsonl(tmp_path):
    model = tiny_tokenizer()
    texts = [t.replace("\n", " ") for t in synthetic_documents(50, seed=4)]
    texts[7] = ""
    (tmp_path / "docs.txt").write_text("\r\n".join(texts) + "\r\n", encoding="utf-8")
    write_jsonl(str(tmp_path / "docs.jsonl"), texts)
    for name in ("docs.txt", "docs.jsonl"):
        argv = ["--input", str(tmp_path / name), "--output-prefix", str(tmp_path / name),
                "--tokenizer-model", model, "--append-eod", "--workers", "1", "--no-progress"]
        assert preprocess_data.main(argv) == 0
    assert _same_files(str(tmp_path / "docs.txt_text_document"), str(tmp_path / "docs.jsonl_text_document"))


def test_summary_line(tmp_path, capsys):
    write_jsonl(str(tmp_path / "a.jsonl"), ["one two three", "four"])
    argv = ["--input", str(tmp_path / "a.jsonl"), "--output-prefix", str(tmp_path / "a"),
            "--tokenizer-model", tiny_tokenizer(), "--workers", "1", "--no-progress"]
    assert preprocess_data.main(argv) == 0
    out = capsys.readouterr().out
    assert "2 documents" in out and "tokens in" in out and "tokens/s" in out


BAD_INPUTS = {
    "malformed json": (b'{"text": "fine"}\n{"text": "broken\n', r"bad\.jsonl:2: invalid JSON"),
    "missing key": (b'{"text": "a"}\n{"text": "b"}\n{"body": "c"}\n', r"bad\.jsonl:3: missing key 'text'"),
    "invalid utf-8": (b'{"text": "a"}\n{"text": "caf\xe9"}\n', r"bad\.jsonl:2: invalid UTF-8"),
    "not a string": (b'{"text": 3}\n', r"bad\.jsonl:1: key 'text' holds int"),
    "lone surrogate": (b'{"text": "a"}\n{"text": "x \\ud800 y"}\n', r"bad\.jsonl:2: cannot encode"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_cleanly(tmp_path, capsys, case):
    content, message = BAD_INPUTS[case]
    good = "\n".join(json.dumps({"text": t}) for t in synthetic_documents(400, seed=1)) + "\n"
    (tmp_path / "good.jsonl").write_text(good, encoding="utf-8")
    (tmp_path / "bad.jsonl").write_bytes(content)
    argv = ["--input", str(tmp_path / "good.jsonl"), str(tmp_path / "bad.jsonl"),
            "--output-prefix", str(tmp_path / "out"), "--tokenizer-model", tiny_tokenizer(),
            "--workers", "2", "--no-progress"]
    assert preprocess_data.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("preprocess_data.py: error: ") and "\n" not in err, err
    assert re.search(message, err), err
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl", "good.jsonl"]  # no outputs, no temporaries


@pytest.mark.parametrize("what", ["input", "glob", "tokenizer"])
def test_missing_paths_fail_cleanly(tmp_path, capsys, what):
    write_jsonl(str(tmp_path / "a.jsonl"), ["text"])
    inputs = {"input": str(tmp_path / "nope.jsonl"), "glob": str(tmp_path / "nope*.jsonl")}
    argv = ["--input", inputs.get(what, str(tmp_path / "a.jsonl")),
            "--output-prefix", str(tmp_path / "out"), "--workers", "1", "--no-progress",
            "--tokenizer-model", str(tmp_path / "nope.model") if what == "tokenizer" else tiny_tokenizer()]
    assert preprocess_data.main(argv) == 1
    err = capsys.readouterr().err
    assert "nope" in err and ("no such file" in err or "no file matches" in err or "not found" in err)
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl"]


def test_unknown_extension_asks_for_input_format(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("a\n")
    argv = ["--input", str(tmp_path / "data.csv"), "--output-prefix", str(tmp_path / "out"),
            "--tokenizer-model", tiny_tokenizer(), "--workers", "1", "--no-progress"]
    assert preprocess_data.main(argv) == 1
    assert "--input-format" in capsys.readouterr().err


def test_interrupted_run_leaves_nothing_finished(tmp_path, monkeypatch):
    write_jsonl(str(tmp_path / "a.jsonl"), synthetic_documents(300, seed=2))
    monkeypatch.setattr(preprocess_module, "CHUNK_BYTES", 1024)
    calls = []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args)

    original = IndexedDatasetWriter.add_documents
    monkeypatch.setattr(IndexedDatasetWriter, "add_documents", interrupted)
    argv = ["--input", str(tmp_path / "a.jsonl"), "--output-prefix", str(tmp_path / "out"),
            "--tokenizer-model", tiny_tokenizer(), "--workers", "2", "--no-progress"]
    assert preprocess_data.main(argv) == 130
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl"]


def test_optimal_dtype_matches_megatron_core():
    from megatron.core.datasets.indexed_dataset import DType

    for vocab in (256, 32000, 65499, 65500, 128256):
        assert optimal_dtype(vocab) == np.dtype(DType.optimal_dtype(vocab))


def test_train_tokenizer(tmp_path):
    write_jsonl(str(tmp_path / "a.jsonl"), synthetic_documents(300, seed=5))
    prefix = str(tmp_path / "tok")
    assert train_tokenizer.main(["--input", str(tmp_path / "a.jsonl"), "--model-prefix", prefix,
                                 "--vocab-size", "320", "--num-threads", "1"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "tok.model", "tok.vocab"]
    sp = sentencepiece.SentencePieceProcessor(model_file=prefix + ".model")
    assert sp.get_piece_size() <= 320 and (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    ids = sp.encode("patch  level\n😀")  # unseen emoji: byte pieces, not <unk>
    assert sp.unk_id() not in ids and sp.decode(ids) == "patch  level\n😀"


def test_train_tokenizer_bad_input(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    assert train_tokenizer.main(["--input", str(tmp_path / "a.jsonl"), "--model-prefix",
                                 str(tmp_path / "tok"), "--vocab-size", "300"]) == 1
    assert "a.jsonl:2: invalid JSON" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl"]


def _die(chunk):
    os._exit(9)  # a worker killed mid-task, e.g. by the OOM killer


def test_dead_worker_fails_cleanly(tmp_path, monkeypatch, capsys):
    write_jsonl(str(tmp_path / "a.jsonl"), synthetic_documents(20, seed=2))
    monkeypatch.setattr(preprocess_module, "encode_chunk", _die)
    argv = ["--input", str(tmp_path / "a.jsonl"), "--output-prefix", str(tmp_path / "out"),
            "--tokenizer-model", tiny_tokenizer(), "--workers", "2", "--no-progress"]
    assert preprocess_data.main(argv) == 1
    assert "worker process died" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl"]


def test_list_fallback_for_older_sentencepiece_gives_same_ids():
    from megatron_patch.data import load_tokenizer

    tokenizer = load_tokenizer(tiny_tokenizer())
    texts = synthetic_documents(20, seed=6) + [""]
    fast = tokenizer.encode_batch(texts)
    tokenizer._numpy_out = False  # what sentencepiece < 0.2.3 supports
    slow = tokenizer.encode_batch(texts)
    assert all(a.dtype == b.dtype == np.int32 and np.array_equal(a, b) for a, b in zip(fast, slow))
    assert [a.tolist() for a in fast] == [tokenizer.encode(t) for t in texts]
