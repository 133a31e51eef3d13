"""Offline tokenisation into megatron-core .bin/.idx files (the engine of tools/preprocess_data.py).

Training never waits for tokenisation: documents are encoded once, here, and training reads
memory-mapped files. One process reads the inputs in 256 KiB chunks of whole lines and streams
results to disk; `workers` processes parse and encode whole chunks with the tokenizer's batch
path (sentencepiece's C++ batch call; for Hugging Face tokenizers the `tokenizers` library's
Rust batch call, on several threads when there are more cores than workers). At most a few
chunks per worker are in flight and the index is streamed too, so memory stays flat on inputs
larger than RAM (megatron-core's IndexedDatasetBuilder, which Megatron-LM's script uses, keeps
every sequence length and document boundary in Python lists until it finalizes).

Output for each JSON key is PREFIX_{key}_document.bin/.idx (PREFIX_{key}_sentence with
--split-sentences), byte-identical to Megatron-LM's preprocess_data.py with the same
--tokenizer-type (SentencePieceTokenizer, Llama2Tokenizer, GPTSentencePieceTokenizer,
HuggingFaceTokenizer, NullTokenizer, GPT2BPETokenizer) and the same flags, --partitions N
included: Megatron-LM deals the input lines to N partitions in turn (line i to partition i mod N;
with --keep-sequential-samples in N contiguous blocks) and concatenates the partitions' outputs,
so with N > 1 the documents come out in that order. Here the partitions are only that order,
spooled to temporary files beside the output; the parallelism is --workers.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Optional

from tqdm import tqdm

import numpy as np

from megatron_patch.data.encode import (EncodedChunk, EncodedKey, encode_chunk, init_worker,
                                        load_sentence_splitter)
from megatron_patch.data.indexed_writer import IndexedDatasetWriter, optimal_dtype
from megatron_patch.data.text_input import InputError, expand_inputs, iter_chunks
from megatron_patch.data.tokenizer import load_tokenizer

CHUNK_BYTES = 1 << 18  # small enough that the last chunks do not leave workers idle for long
IN_FLIGHT_PER_WORKER = 8  # chunks queued per worker: covers a slow chunk (one huge document) at the head


@dataclass
class PreprocessConfig:
    """What tools/preprocess_data.py's flags resolve to."""

    input: list[str]
    output_prefix: str
    tokenizer_model: Optional[str]
    tokenizer_type: Optional[str] = None  # None: a directory is HuggingFaceTokenizer, a file sentencepiece
    vocab_size: Optional[int] = None  # NullTokenizer only
    vocab_file: Optional[str] = None  # GPT2BPETokenizer's vocab.json
    merge_file: Optional[str] = None  # GPT2BPETokenizer's merges.txt
    legacy_tokenizer: bool = False  # GPT2BPETokenizer: Megatron-LM's --legacy-tokenizer ids
    json_keys: tuple[str, ...] = ("text",)
    append_eod: bool = False
    workers: int = 1
    log_interval: int = 1000
    input_format: str = "auto"
    progress: bool = True
    partitions: int = 1  # Megatron-LM's --partitions: the order of the documents (see above)
    keep_sequential_samples: bool = False  # with partitions: contiguous blocks, input order kept
    split_sentences: bool = False  # one sequence per sentence (NLTK punkt); PREFIX_{key}_sentence
    keep_newlines: bool = False  # with split_sentences: keep the newlines after sentences
    lang: str = "english"  # punkt's language for split_sentences


@dataclass
class PreprocessResult:
    """Totals of a finished run and the files written (one .bin/.idx pair per key)."""

    documents: int
    tokens: int
    input_bytes: int
    seconds: float
    outputs: list[str]


def output_prefix(prefix: str, key: str, level: str = "document") -> str:
    """Megatron-LM's naming: PREFIX_{key}_document, or _sentence with --split-sentences (+ .bin / .idx)."""
    return f"{prefix}_{key}_{level}"


class RoundRobinPartitions:
    """Megatron-LM's --partitions N order: document i goes to partition i mod N, and the output
    is partition 0's documents, then partition 1's, ... Documents are spooled per key and
    partition to raw files in a temporary directory beside the output, then replayed in order,
    so memory stays flat."""

    _BLOCK = 1 << 16  # documents per replayed block

    def __init__(self, partitions: int, keys: list[str], directory: str, name: str) -> None:
        self.partitions = partitions
        self._tmp = tempfile.TemporaryDirectory(prefix=f".{name}.partitions.", dir=directory)
        self._files = {(key, p, kind): open(os.path.join(self._tmp.name, f"{i}.{p}.{kind}"), "w+b")
                       for i, key in enumerate(keys) for p in range(partitions)
                       for kind in ("tokens", "lengths", "docs")}

    def add(self, key: str, first_document: int, part: EncodedKey) -> None:
        """Spool one chunk's documents of `key`; first_document: the global index of its first."""
        docs = part.sequences_per_document
        doc_part = (first_document + np.arange(docs.size, dtype=np.int64)) % self.partitions
        seq_part = np.repeat(doc_part, docs)
        token_part = np.repeat(seq_part, part.sequence_lengths)
        for p in range(self.partitions):
            self._files[key, p, "tokens"].write(part.tokens[token_part == p].tobytes())
            self._files[key, p, "lengths"].write(part.sequence_lengths[seq_part == p].tobytes())
            self._files[key, p, "docs"].write(docs[doc_part == p].astype(np.int64).tobytes())

    def replay(self, key: str, writer: IndexedDatasetWriter) -> None:
        """Write `key`'s documents, partition by partition, to `writer`."""
        for p in range(self.partitions):
            files = [self._files[key, p, kind] for kind in ("tokens", "lengths", "docs")]
            for f in files:
                f.flush()
                f.seek(0)
            tokens, lengths, docs = files
            while True:
                per_document = np.frombuffer(docs.read(self._BLOCK * 8), dtype=np.int64)
                if not per_document.size:
                    break
                sequence_lengths = np.frombuffer(lengths.read(int(per_document.sum()) * 4),
                                                 dtype=np.int32)
                count = int(sequence_lengths.sum(dtype=np.int64))
                block = np.frombuffer(tokens.read(count * writer.dtype.itemsize), dtype=writer.dtype)
                writer.add_documents(block, sequence_lengths, per_document)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._tmp.cleanup()


def threads_per_worker(workers: int) -> int:
    """Cores this process may use, shared among the workers (at least one each)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def preprocess(config: PreprocessConfig) -> PreprocessResult:
    """Tokenise config.input into .bin/.idx files; InputError (nothing written) on bad input."""
    start = time.perf_counter()
    if config.workers < 1:
        raise InputError(f"--workers must be >= 1, got {config.workers}")
    if config.partitions < 1:
        raise InputError(f"--partitions must be >= 1, got {config.partitions}")
    files = expand_inputs(config.input, config.input_format)
    try:
        tokenizer = load_tokenizer(config.tokenizer_model, config.tokenizer_type, config.vocab_size,
                                   vocab_file=config.vocab_file, merge_file=config.merge_file,
                                   legacy=config.legacy_tokenizer)
    except ValueError as err:
        raise InputError(str(err)) from None
    splitter = None
    if config.split_sentences:
        load_sentence_splitter(config.lang, config.keep_newlines)  # InputError now, not in a worker
        splitter = (config.lang, config.keep_newlines)
    if config.append_eod and tokenizer.eod < 0:
        raise InputError(f"{config.tokenizer_model}: the tokenizer has no end-of-document (EOS) "
                         "token for --append-eod; define eos_token (tokenizer_config.json for a "
                         "Hugging Face tokenizer) or drop --append-eod")
    keys = list(config.json_keys)
    if len(keys) > 1 and any(f.format == "text" for f in files):
        raise InputError("plain-text inputs hold one text per line: give a single --json-keys "
                         "(it only names the output)")
    dtype = optimal_dtype(tokenizer.vocab_size)
    os.makedirs(os.path.dirname(os.path.abspath(config.output_prefix)), exist_ok=True)

    level = "sentence" if config.split_sentences else "document"
    round_robin = config.partitions > 1 and not config.keep_sequential_samples
    spool: Optional[RoundRobinPartitions] = None
    writers: dict[str, IndexedDatasetWriter] = {}
    bar = tqdm(total=sum(f.size for f in files), unit="B", unit_scale=True, file=sys.stderr,
               disable=not config.progress, mininterval=0.5 if sys.stderr.isatty() else 30.0,
               desc="preprocess")
    documents = tokens = input_bytes = 0
    next_log = config.log_interval
    pending: deque[tuple[Future, int]] = deque()

    def drain_one() -> None:
        """Write the oldest chunk's result (results are consumed in input order)."""
        nonlocal documents, tokens, input_bytes, next_log
        future, disk_bytes = pending.popleft()
        encoded: EncodedChunk = future.result()  # re-raises a worker's InputError
        for key, part in encoded.keys.items():
            if spool is not None:
                spool.add(key, documents, part)
            else:
                writers[key].add_documents(part.tokens, part.sequence_lengths,
                                           part.sequences_per_document)
            tokens += part.tokens.size
        documents += encoded.num_documents
        input_bytes += encoded.num_bytes
        if documents >= next_log:
            bar.set_postfix_str(f"{documents:,} docs, {tokens:,} tokens", refresh=False)
            next_log = documents + config.log_interval
        bar.update(disk_bytes)

    # A process pool that notices a dead worker (e.g. killed for memory): its futures raise
    # BrokenProcessPool instead of waiting forever as multiprocessing.Pool's would.
    encoder = tokenizer.batch_encoder()
    executor = ProcessPoolExecutor(
        config.workers, initializer=init_worker,
        initargs=(encoder, keys, tokenizer.eod if config.append_eod else None, dtype.str,
                  threads_per_worker(config.workers), splitter))
    try:
        for key in keys:
            writers[key] = IndexedDatasetWriter(output_prefix(config.output_prefix, key, level), dtype)
        if round_robin:
            spool = RoundRobinPartitions(config.partitions, keys,
                                         os.path.dirname(os.path.abspath(config.output_prefix)),
                                         os.path.basename(config.output_prefix))
        for chunk, disk_bytes in iter_chunks(files, CHUNK_BYTES):
            pending.append((executor.submit(encode_chunk, chunk), disk_bytes))
            if len(pending) >= IN_FLIGHT_PER_WORKER * config.workers:
                drain_one()
        while pending:
            drain_one()
        if spool is not None:
            for key in keys:
                spool.replay(key, writers[key])
        bar.set_postfix_str(f"{documents:,} docs, {tokens:,} tokens")
        outputs = []
        for writer in writers.values():
            outputs.extend(writer.finalize())
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        if spool is not None:
            spool.close()
        bar.close()
    return PreprocessResult(documents, tokens, input_bytes, time.perf_counter() - start, outputs)
