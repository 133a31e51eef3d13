"""Offline tokenisation into megatron-core .bin/.idx files (the engine of tools/preprocess_data.py).

Training never waits for tokenisation: documents are encoded once, here, and training reads
memory-mapped files. One process reads the inputs in 256 KiB chunks of whole lines and streams
results to disk; `workers` processes parse and encode whole chunks with the tokenizer's batch
path (sentencepiece's C++ batch call; for Hugging Face tokenizers the `tokenizers` library's
Rust batch call, on several threads when there are more cores than workers). At most a few
chunks per worker are in flight and the index is streamed too, so memory stays flat on inputs
larger than RAM (megatron-core's IndexedDatasetBuilder, which Megatron-LM's script uses, keeps
every sequence length and document boundary in Python lists until it finalizes).

Output for each JSON key is PREFIX_{key}_document.bin/.idx, byte-identical to Megatron-LM's
preprocess_data.py with the same --tokenizer-type (SentencePieceTokenizer, Llama2Tokenizer,
GPTSentencePieceTokenizer, HuggingFaceTokenizer, NullTokenizer) and the same flags.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Optional

from tqdm import tqdm

from megatron_patch.data.encode import EncodedChunk, encode_chunk, init_worker
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
    json_keys: tuple[str, ...] = ("text",)
    append_eod: bool = False
    workers: int = 1
    log_interval: int = 1000
    input_format: str = "auto"
    progress: bool = True


@dataclass
class PreprocessResult:
    """Totals of a finished run and the files written (one .bin/.idx pair per key)."""

    documents: int
    tokens: int
    input_bytes: int
    seconds: float
    outputs: list[str]


def output_prefix(prefix: str, key: str) -> str:
    """Megatron-LM's naming: PREFIX_{key}_document (+ .bin / .idx)."""
    return f"{prefix}_{key}_document"


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
    files = expand_inputs(config.input, config.input_format)
    try:
        tokenizer = load_tokenizer(config.tokenizer_model, config.tokenizer_type, config.vocab_size)
    except ValueError as err:
        raise InputError(str(err)) from None
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
                  threads_per_worker(config.workers)))
    try:
        for key in keys:
            writers[key] = IndexedDatasetWriter(output_prefix(config.output_prefix, key), dtype)
        for chunk, disk_bytes in iter_chunks(files, CHUNK_BYTES):
            pending.append((executor.submit(encode_chunk, chunk), disk_bytes))
            if len(pending) >= IN_FLIGHT_PER_WORKER * config.workers:
                drain_one()
        while pending:
            drain_one()
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
        bar.close()
    return PreprocessResult(documents, tokens, input_bytes, time.perf_counter() - start, outputs)
