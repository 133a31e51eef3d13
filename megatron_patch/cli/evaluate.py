"""Token-level loss and perplexity of a checkpoint on a dataset's validation split; prints one JSON.

    python tools/evaluate.py --load runs/demo/token --data-path data/corpus_text_document \
        --tokenizer-model data/tok.model
    python tools/evaluate.py --load runs/demo/patch --data-path ... --tokenizer-model ... --patch-size 4
    torchrun --nproc_per_node=2 tools/evaluate.py --load ... --tensor-model-parallel-size 2 ...

--load takes a run directory of tools/pretrain.py (its last stage's latest checkpoint), a
checkpoint directory (with latest_checkpointed_iteration.txt) or one iter_*/release directory. Output: {"checkpoint", "loss", "ppl", "tokens", "split", "eval_iters"} plus
"patch_loss", "patch_ppl", "patch_tokens" with --patch-size K > 1. Sequence length and batch
default to the checkpoint's run config. On the run's own --data-path the split and number of
batches are the run's too (the result equals its last val_loss record); any other data is held
out: by default all of it ("--split 0,1,0") is evaluated once.
"""
import argparse
import json
import os
import sys
import warnings

import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--load", required=True, help="checkpoint directory")
    p.add_argument("--data-path", required=True, nargs="+", help="Megatron prefix(es)")
    p.add_argument("--tokenizer-model", default=None,
                   help="the run's tokenizer: a SentencePiece .model or a Hugging Face tokenizer directory")
    p.add_argument("--tokenizer-type", default=None,
                   choices=("SentencePieceTokenizer", "Llama2Tokenizer", "GPTSentencePieceTokenizer",
                            "HuggingFaceTokenizer", "NullTokenizer",
                            "GPT2BPETokenizer"),
                   help="default: HuggingFaceTokenizer for a directory, SentencePieceTokenizer for a file, "
                        "GPT2BPETokenizer for --vocab-file/--merge-file")
    p.add_argument("--vocab-size", type=int, default=None, help="NullTokenizer's vocabulary size")
    p.add_argument("--vocab-file", default=None, help="GPT2BPETokenizer's vocab.json")
    p.add_argument("--merge-file", default=None, help="GPT2BPETokenizer's merges.txt")
    p.add_argument("--patch-size", type=int, default=1, help="also report the K-patch loss")
    p.add_argument("--split", default=None,
                   help="default: the run's split on its own data, else 0,1,0 (all held out)")
    p.add_argument("--seq-length", type=int, default=None, help="tokens per sample (default: the run's)")
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--global-batch-size", type=int, default=None)
    p.add_argument("--eval-iters", type=int, default=None,
                   help="batches (default: the run's on its data, else the whole split once)")
    p.add_argument("--output", default=None, help="also write the JSON to this file")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    args = parse_args(argv)
    from megatron_patch import distributed
    from megatron_patch.config import ParallelConfig
    from megatron_patch.training.rundir import CheckpointError
    from megatron_patch.training.evaluation import evaluate_checkpoint

    rank = int(os.environ.get("RANK", 0))
    try:
        if args.patch_size < 1:
            raise ValueError("--patch-size must be >= 1")
        parallel = ParallelConfig(args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
        distributed.initialize(parallel)
        result = evaluate_checkpoint(
            args.load, args.data_path, args.tokenizer_model, parallel, patch_size=args.patch_size,
            tokenizer_type=args.tokenizer_type, vocab_size=args.vocab_size,
            vocab_file=args.vocab_file, merge_file=args.merge_file,
            split=args.split, seq_length=args.seq_length, micro_batch_size=args.micro_batch_size,
            global_batch_size=args.global_batch_size, eval_iters=args.eval_iters,
        )
    except (ValueError, CheckpointError, FileNotFoundError) as err:
        if rank == 0:
            print(f"evaluate.py: error: {err}", file=sys.stderr, flush=True)
        distributed.destroy()
        return 1
    if torch.distributed.get_rank() == 0:
        print(json.dumps(result), flush=True)
        if args.output:
            from megatron_patch import io

            io.write_json(args.output, result)
    distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
