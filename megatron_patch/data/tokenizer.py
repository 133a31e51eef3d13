"""Tokenizers under Megatron-LM's `--tokenizer-type` names, with the ids Megatron-LM writes.

    tok = load_tokenizer("tokenizer.model")                        # SentencePieceTokenizer
    tok = load_tokenizer("hf_tokenizer_dir/")                      # HuggingFaceTokenizer
    tok = load_tokenizer(None, "NullTokenizer", vocab_size=32000)  # ids written as text
    tok.vocab_size, tok.eod, tok.unique_identifiers, tok.encode(text), tok.decode(ids)

What each type encodes, as Megatron-LM's preprocess_data.py does with its default flags
(megatron.core.tokenizers):
- SentencePieceTokenizer, Llama2Tokenizer, GPTSentencePieceTokenizer: the plain sentencepiece ids
  (no BOS); EOD is the model's EOS id; the vocabulary is the piece count.
- HuggingFaceTokenizer: a directory with `tokenizer.json` (plus the usual tokenizer_config.json /
  special_tokens_map.json), loaded by megatron-core's HuggingFaceTokenizer, offline. Ids are
  those of the tokenizer's tokens without special tokens added around the text; EOD is the EOS
  token; the vocabulary includes added tokens.
- NullTokenizer: the text already is ids, separated by whitespace. `--vocab-size N` makes the
  vocabulary N + 1 with EOD = N (megatron-core's NullTokenizer).
- GPT2BPETokenizer: GPT-2's byte-level BPE from `--vocab-file vocab.json --merge-file merges.txt`
  (see GPT2BPETokenizer for how its ids match both of Megatron-LM's implementations); EOD is
  `<|endoftext|>`'s id; the vocabulary is vocab.json's size.

Preprocessing workers never import megatron-core or transformers: `batch_encoder()` returns a
small picklable object that encodes lists of texts to int32 arrays with the tokenizer's native
batch path (sentencepiece's C++ batch call, the `tokenizers` library's multi-threaded Rust
batch call), and that gives the same ids as `encode`.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Optional, Sequence

import numpy as np

SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "Llama2Tokenizer", "GPTSentencePieceTokenizer")
HUGGINGFACE_TYPE = "HuggingFaceTokenizer"
NULL_TYPE = "NullTokenizer"
GPT2_TYPE = "GPT2BPETokenizer"
TOKENIZER_TYPES = SENTENCEPIECE_TYPES + (HUGGINGFACE_TYPE, NULL_TYPE, GPT2_TYPE)
GPT2_EOD = "<|endoftext|>"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class SentencePieceTokenizer:
    """A loaded sentencepiece model: `.vocab_size`, `.eod`, `.bos`, `.encode`, `.decode`."""

    tokenizer_type = "SentencePieceTokenizer"

    def __init__(self, model_path: str) -> None:
        import sentencepiece

        if model_path and os.path.isdir(model_path):
            raise ValueError(
                f"tokenizer model {model_path!r} is a directory: for a Hugging Face tokenizer "
                "directory (tokenizer.json) pass --tokenizer-type HuggingFaceTokenizer"
            )
        if not model_path or not os.path.isfile(model_path):
            raise ValueError(
                f"tokenizer model {model_path!r} not found: pass a SentencePiece .model file "
                "(e.g. LLaMA-2's tokenizer.model, or one made by tools/train_tokenizer.py)"
            )
        self.model_path = os.path.abspath(model_path)
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(self.model_path)
        except (OSError, RuntimeError) as err:
            raise ValueError(f"{model_path}: not a SentencePiece model ({err})") from err
        # sentencepiece >= 0.2.3 (pybind11 wrapper) returns int32 buffers; older releases only
        # Python lists, converted below at some cost (about a third slower preprocessing).
        try:
            self._sp.encode(["a"], out_type="numpy")
            self._numpy_out = True
        except (ValueError, TypeError):
            self._numpy_out = False

    @property
    def vocab_size(self) -> int:
        """Number of pieces; ids are in [0, vocab_size)."""
        return int(self._sp.get_piece_size())

    @property
    def eod(self) -> int:
        """End-of-document id appended by --append-eod: the model's EOS (-1 if it has none)."""
        return int(self._sp.eos_id())

    @property
    def bos(self) -> int:
        """Beginning-of-sentence id (-1 if the model has none); never inserted by preprocessing."""
        return int(self._sp.bos_id())

    @property
    def processor(self):
        """The underlying sentencepiece.SentencePieceProcessor."""
        return self._sp

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS or EOS."""
        return list(self._sp.encode(text, out_type=int))

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[np.ndarray]:
        """Token ids of each text as int32 arrays (sentencepiece's C++ batch path, no Python ints)."""
        if self._numpy_out:
            return self._sp.encode(texts, out_type="numpy", num_threads=num_threads)
        ids = self._sp.encode(texts, out_type=int, num_threads=num_threads)
        return [np.asarray(one, dtype=np.int32) for one in ids]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` (a list, NumPy array or 1-D tensor of ints)."""
        return self._sp.decode([int(i) for i in ids])

    @property
    def unique_identifiers(self) -> dict[str, str]:
        """What megatron-core's dataset config hashes to identify the tokenizer."""
        return {"class": type(self).__name__, "tokenizer_path": self.model_path}

    def batch_encoder(self) -> "_SentencePieceBatch":
        return _SentencePieceBatch(self.model_path)


class HuggingFaceTokenizer:
    """A Hugging Face tokenizer directory, loaded by megatron-core's HuggingFaceTokenizer.

    Loading imports transformers and megatron-core (a few seconds); encoding goes straight to
    the `tokenizers` backend, which gives the ids megatron-core's `tokenize` gives (checked when
    loading: ids whose token maps back to another id are remapped as megatron-core does).
    """

    tokenizer_type = HUGGINGFACE_TYPE

    def __init__(self, path: str) -> None:
        if not path or not os.path.isdir(path):
            hint = (" (a file: for a SentencePiece .model use --tokenizer-type "
                    "SentencePieceTokenizer)" if path and os.path.isfile(path) else "")
            raise ValueError(
                f"--tokenizer-model {path!r} is not a directory{hint}: HuggingFaceTokenizer needs "
                "a local directory holding tokenizer.json (the Hub is never contacted)"
            )
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            present = ", ".join(sorted(os.listdir(path))[:8]) or "nothing"
            raise ValueError(
                f"{path}: no tokenizer.json (the directory holds {present}); save the tokenizer "
                "with `tokenizer.save_pretrained(dir)` from a fast Hugging Face tokenizer"
            )
        self.path = os.path.abspath(path)
        # Offline: a local directory never needs the Hub. Loading encodes a probe text, kept off
        # the tokenizers library's thread pool: a process forked after that pool started
        # (preprocessing workers) would encode on one thread.
        with _environ(HF_HUB_OFFLINE="1",
                      TOKENIZERS_PARALLELISM=os.environ.get("TOKENIZERS_PARALLELISM", "false")):
            self._mcore = _load_megatron_tokenizer(
                self.path, {"library": "huggingface"},
                # Megatron-LM's build_tokenizer arguments with its default flags.
                vocab_file=None, merges_file=None, additional_special_tokens=[], use_fast=False,
                trust_remote_code=False, include_special_tokens=False)
        self._hf = self._mcore._tokenizer.tokenizer  # the transformers tokenizer
        backend = getattr(self._hf, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{path}: transformers loaded a slow tokenizer "
                             f"({type(self._hf).__name__}); a tokenizer.json-backed one is needed")
        self._json = backend.to_str()
        self._split_special_tokens = bool(getattr(self._hf, "split_special_tokens", False))
        self._remap = _token_roundtrip_remap(backend, len(self._hf), self._hf.unk_token_id)
        self._backend = None

    @property
    def vocab_size(self) -> int:
        """Vocabulary with added tokens (len of the transformers tokenizer)."""
        return int(self._mcore.vocab_size)

    @property
    def eod(self) -> int:
        """The EOS token's id, or -1 if the tokenizer defines no EOS token."""
        eod = self._mcore.eod
        return -1 if eod is None else int(eod)

    @property
    def unique_identifiers(self):
        """megatron-core's identifiers for this tokenizer (class, path, load arguments)."""
        return self._mcore.unique_identifiers

    @property
    def transformers_tokenizer(self):
        """The transformers tokenizer megatron-core loaded (special tokens, chat template)."""
        return self._hf

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return self.encode_batch([text])[0].tolist()

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self._backend is None:
            self._backend = self.batch_encoder()
        return self._backend.encode_batch(texts)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._mcore.detokenize([int(i) for i in ids])

    def batch_encoder(self) -> "_HuggingFaceBatch":
        return _HuggingFaceBatch(self._json, self._split_special_tokens, self._remap)


class NullTokenizer:
    """Text that already is token ids ("12 7 431"): megatron-core's NullTokenizer.

    `vocab_size` is the flag's N plus one and EOD is N, as in megatron-core.
    """

    tokenizer_type = NULL_TYPE

    def __init__(self, vocab_size: Optional[int]) -> None:
        if vocab_size is None:
            raise ValueError("NullTokenizer needs the vocabulary size: pass --vocab-size N "
                             "(ids must be below N; N itself is the end-of-document id)")
        if int(vocab_size) < 1:
            raise ValueError(f"--vocab-size must be >= 1, got {vocab_size}")
        self._mcore = _load_megatron_tokenizer(None, {"library": "null"}, vocab_size=int(vocab_size))

    @property
    def vocab_size(self) -> int:
        return int(self._mcore.vocab_size)

    @property
    def eod(self) -> int:
        return int(self._mcore.eod)

    @property
    def unique_identifiers(self):
        return self._mcore.unique_identifiers

    def encode(self, text: str) -> list[int]:
        return parse_ids(text, self.vocab_size).tolist()

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [parse_ids(text, self.vocab_size) for text in texts]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return " ".join(str(int(i)) for i in ids)

    def batch_encoder(self) -> "_NullBatch":
        return _NullBatch(self.vocab_size)


class GPT2BPEFiles(os.PathLike):
    """A GPT-2 BPE tokenizer's two files, where a tokenizer path is expected (HF export).

    As a path it is the vocabulary file (so `os.path.exists` checks it); `load_tokenizer(files)`
    and the HF export's `write_hf_tokenizer(files, dir)` read both."""

    def __init__(self, vocab_file: str, merge_file: str) -> None:
        self.vocab_file, self.merge_file = vocab_file, merge_file

    def __fspath__(self) -> str:
        return self.vocab_file

    def __repr__(self) -> str:
        return f"GPT2BPEFiles({self.vocab_file!r}, {self.merge_file!r})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, GPT2BPEFiles)
                and (self.vocab_file, self.merge_file) == (other.vocab_file, other.merge_file))

    def __hash__(self) -> int:
        return hash((self.vocab_file, self.merge_file))


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (bytes_to_unicode of OpenAI's encoder.py)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_gpt2_files(vocab_file: Optional[str], merge_file: Optional[str]
                    ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocabulary, merges in rank order) as Megatron-LM's GPT-2 tokenizer reads the two files.

    merges.txt: the file split at "\n" without its first line (the "#version" header) and its
    last (empty after the final newline), each line split at whitespace; a pair listed twice
    takes its later rank. ValueError, naming the fix, for files that are missing or that are not
    a consistent byte-level BPE (ids 0..n-1, `<|endoftext|>`, every byte's symbol, merges whose
    parts and result are in the vocabulary).
    """
    if merge_file and not vocab_file:
        raise ValueError("--merge-file needs --vocab-file too: GPT2BPETokenizer reads vocab.json "
                         "and merges.txt (e.g. gpt2-vocab.json and gpt2-merges.txt)")
    if not vocab_file or not merge_file:
        raise ValueError("GPT2BPETokenizer needs --vocab-file VOCAB.json and --merge-file "
                         "MERGES.txt (GPT-2's are gpt2-vocab.json and gpt2-merges.txt)")
    for flag, path in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
        if not os.path.isfile(path):
            raise ValueError(f"{flag} {path}: no such file")
    try:
        with open(vocab_file, encoding="utf-8") as f:
            vocab = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--vocab-file {vocab_file}: not a JSON vocabulary ({err}); pass GPT-2's "
                         "vocab.json (token -> id); the merges go to --merge-file") from None
    if not isinstance(vocab, dict) or not all(isinstance(i, int) and not isinstance(i, bool)
                                              for i in vocab.values()):
        raise ValueError(f"--vocab-file {vocab_file}: expected a JSON object of token -> id")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"--vocab-file {vocab_file}: ids must be 0..{len(vocab) - 1}, each once")
    if GPT2_EOD not in vocab:
        raise ValueError(f"--vocab-file {vocab_file}: no {GPT2_EOD} token (GPT2BPETokenizer's "
                         "end-of-document id); add it to the vocabulary")
    missing = [b for b, c in gpt2_bytes_to_unicode().items() if c not in vocab]
    if missing:
        raise ValueError(f"--vocab-file {vocab_file}: not a byte-level BPE vocabulary: the symbols "
                         f"of {len(missing)} bytes (e.g. 0x{missing[0]:02x}) are missing")
    try:
        with open(merge_file, encoding="utf-8") as f:
            lines = f.read().split("\n")[1:-1]
    except UnicodeDecodeError as err:
        raise ValueError(f"--merge-file {merge_file}: not UTF-8 text ({err})") from None
    ranks: dict[tuple, int] = {}
    for rank, line in enumerate(lines):
        ranks[tuple(line.split())] = rank
    merges = [pair for pair, _ in sorted(ranks.items(), key=lambda item: item[1]) if len(pair) == 2]
    if not merges and lines:
        raise ValueError(f"--merge-file {merge_file}: no merges (lines of two tokens); pass "
                         "GPT-2's merges.txt")
    for left, right in merges:
        for token in (left, right, left + right):
            if token not in vocab:
                raise ValueError(f"--merge-file {merge_file}: the merge {left!r} {right!r} uses "
                                 f"{token!r}, which is not in --vocab-file {vocab_file}; the two "
                                 "files must come from the same tokenizer")
    return vocab, merges


def build_gpt2_backend(vocab: dict[str, int], merges: list[tuple[str, str]],
                       match_special: bool = True):
    """A `tokenizers.Tokenizer` encoding as Megatron-LM's GPT2BPETokenizer (see GPT2BPETokenizer)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    backend = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    if match_special:
        backend.add_special_tokens([AddedToken(GPT2_EOD, special=True, normalized=False)])
    return backend


class GPT2BPETokenizer:
    """GPT-2's byte-level BPE from vocab.json and merges.txt (`--tokenizer-type GPT2BPETokenizer`).

    Ids are those of both of Megatron-LM's implementations (core_v0.16.1): the regex
    pre-tokenization, GPT-2's byte -> character table and the merges by rank, read from the files
    as Megatron-LM reads them. They differ only on the text `<|endoftext|>` itself:
    - default (megatron.core.tokenizers, what its preprocess_data.py uses unless
      --legacy-tokenizer): a transformers GPT-2 tokenizer, which matches `<|endoftext|>` in the
      text as the EOD token;
    - legacy=True (`--legacy-tokenizer`: megatron.training's gpt2_tokenization.py, the default
      of Megatron-LM releases before megatron.core.tokenizers): spelled out byte by byte as any
      other text.
    Encoding runs in the `tokenizers` library (Rust) with exactly those merges.
    """

    tokenizer_type = GPT2_TYPE

    def __init__(self, vocab_file: Optional[str], merge_file: Optional[str],
                 legacy: bool = False) -> None:
        vocab, merges = read_gpt2_files(vocab_file, merge_file)
        self.vocab_file = os.path.abspath(vocab_file)
        self.merge_file = os.path.abspath(merge_file)
        self.legacy = bool(legacy)
        self.vocab, self.merges = vocab, merges
        self._backend = build_gpt2_backend(vocab, merges, match_special=not self.legacy)
        self._json = self._backend.to_str()
        self._batch = None

    @property
    def vocab_size(self) -> int:
        """Tokens in vocab.json."""
        return len(self.vocab)

    @property
    def eod(self) -> int:
        """The id of `<|endoftext|>`."""
        return int(self.vocab[GPT2_EOD])

    @property
    def files(self) -> GPT2BPEFiles:
        return GPT2BPEFiles(self.vocab_file, self.merge_file)

    @property
    def unique_identifiers(self) -> dict[str, str]:
        return {"class": type(self).__name__, "vocab_file": self.vocab_file,
                "merge_file": self.merge_file}

    @property
    def backend(self):
        """The `tokenizers.Tokenizer` that encodes (what the HF export ships as tokenizer.json)."""
        return self._backend

    def encode(self, text: str) -> list[int]:
        return list(self._backend.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self._batch is None:
            self._batch = self.batch_encoder()
        return self._batch.encode_batch(texts)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def batch_encoder(self) -> "_HuggingFaceBatch":
        return _HuggingFaceBatch(self._json, False, None)


Tokenizer = Any  # one of the four classes above


def load_tokenizer(tokenizer_model: Optional[str], tokenizer_type: Optional[str] = None,
                   vocab_size: Optional[int] = None, vocab_file: Optional[str] = None,
                   merge_file: Optional[str] = None, legacy: bool = False) -> Tokenizer:
    """A tokenizer by Megatron-LM's `--tokenizer-type` name (ValueError with the fix on a mistake).

    tokenizer_type None: a directory is a HuggingFaceTokenizer, a file a SentencePieceTokenizer,
    vocab_file + merge_file (or a GPT2BPEFiles as tokenizer_model) a GPT2BPETokenizer.
    vocab_size is only read by NullTokenizer (which needs no tokenizer_model), vocab_file and
    merge_file (and `legacy`, see GPT2BPETokenizer) only by GPT2BPETokenizer.
    """
    if isinstance(tokenizer_model, GPT2BPEFiles):
        tokenizer_model, vocab_file, merge_file = None, tokenizer_model.vocab_file, tokenizer_model.merge_file
        tokenizer_type = tokenizer_type or GPT2_TYPE
    if tokenizer_type is None and (vocab_file or merge_file) and not tokenizer_model:
        tokenizer_type = GPT2_TYPE
    if tokenizer_type == GPT2_TYPE:
        if tokenizer_model:
            raise ValueError("GPT2BPETokenizer reads --vocab-file and --merge-file, not "
                             f"--tokenizer-model ({tokenizer_model}); drop --tokenizer-model")
        return GPT2BPETokenizer(vocab_file, merge_file, legacy=legacy)
    if vocab_file or merge_file:
        raise ValueError("--vocab-file/--merge-file are read only by --tokenizer-type "
                         f"GPT2BPETokenizer, not {tokenizer_type or 'this tokenizer'}; drop them "
                         "or pass --tokenizer-type GPT2BPETokenizer")
    if tokenizer_type is None:
        if not tokenizer_model:
            raise ValueError("no tokenizer given: pass --tokenizer-model (a SentencePiece .model "
                             "file or a Hugging Face tokenizer directory), or --vocab-file and "
                             "--merge-file for GPT2BPETokenizer")
        tokenizer_type = (HUGGINGFACE_TYPE if os.path.isdir(tokenizer_model)
                          else SENTENCEPIECE_TYPES[0])
    if tokenizer_type in SENTENCEPIECE_TYPES:
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type == HUGGINGFACE_TYPE:
        return HuggingFaceTokenizer(tokenizer_model)
    if tokenizer_type == NULL_TYPE:
        return NullTokenizer(vocab_size)
    raise ValueError(f"unknown --tokenizer-type {tokenizer_type!r}; choose one of "
                     f"{', '.join(TOKENIZER_TYPES)}")


def parse_ids(text: str, vocab_size: int) -> np.ndarray:
    """NullTokenizer's encoding: whitespace-separated integers in [0, vocab_size) as int32.

    On text megatron-core accepts (ids separated by single spaces) the result is the same; an
    empty text is an empty document here, an error there.
    """
    try:
        ids = np.array([int(piece) for piece in text.split()], dtype=np.int64)
    except ValueError:
        bad = next(p for p in text.split() if not _is_int(p))
        raise ValueError(f"NullTokenizer reads whitespace-separated integer ids, got {bad[:40]!r}"
                         ) from None
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise ValueError(f"id {bad} is outside the vocabulary [0, {vocab_size}) "
                         f"(--vocab-size {vocab_size - 1}; raise it if the data is right)")
    return ids.astype(np.int32)


def _is_int(piece: str) -> bool:
    try:
        int(piece)
        return True
    except ValueError:
        return False


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of a block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _load_megatron_tokenizer(path: Optional[str], metadata: dict, **kwargs):
    """megatron-core's MegatronTokenizer.from_pretrained, as Megatron-LM's build_tokenizer calls it."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(Apex|apex|Transformer Engine).*")
        from megatron.core.tokenizers import MegatronTokenizer

    try:
        return MegatronTokenizer.from_pretrained(tokenizer_path=path, metadata_path=dict(metadata),
                                                 **kwargs)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: cannot load the tokenizer ({err})") from None


def _token_roundtrip_remap(backend, size: int, unk_id: Optional[int]) -> Optional[np.ndarray]:
    """Lookup table turning backend ids into megatron-core's (token -> id) ids; None if identity.

    megatron-core converts text to token strings, then strings to ids; an id whose string
    belongs to another id (duplicate strings among added tokens) comes back as that other id.
    """
    remap = None
    for i in range(size):
        token = backend.id_to_token(i)
        j = backend.token_to_id(token) if token is not None else None
        if j is None:
            j = unk_id
        if j != i and j is not None:
            if remap is None:
                remap = np.arange(size, dtype=np.int32)
            remap[i] = j
    return remap


# --- picklable batch encoders for preprocessing workers --------------------------------------

class _SentencePieceBatch:
    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self._tokenizer: Optional[SentencePieceTokenizer] = None

    def __getstate__(self):
        return {"model_path": self.model_path, "_tokenizer": None}

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self._tokenizer is None:
            self._tokenizer = SentencePieceTokenizer(self.model_path)
        return self._tokenizer.encode_batch(texts)


class _HuggingFaceBatch:
    def __init__(self, tokenizer_json: str, split_special_tokens: bool,
                 remap: Optional[np.ndarray]) -> None:
        self.tokenizer_json = tokenizer_json
        self.split_special_tokens = split_special_tokens
        self.remap = remap
        self._backend = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_backend"] = None
        return state

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self._backend is None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(self.tokenizer_json)
            backend.no_truncation()  # transformers encodes without the file's truncation/padding
            backend.no_padding()
            backend.encode_special_tokens = self.split_special_tokens
            self._backend = backend
        encodings = self._backend.encode_batch_fast(texts, add_special_tokens=False)
        ids = [np.asarray(e.ids, dtype=np.int32) for e in encodings]
        if self.remap is not None:
            ids = [self.remap[a] for a in ids]
        return ids


class _NullBatch:
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [parse_ids(text, self.vocab_size) for text in texts]
