"""The launch lines of Megatron-LM's own GPT/LLaMA/Mixtral example scripts (NVIDIA/Megatron-LM at
core_v0.16.1: examples/gpt3/train_gpt3_175b_distributed.sh, examples/llama/
train_llama3_8b_h100_fp8.sh in both data branches, examples/mixtral/
train_mixtral_8x7b_distributed.sh), the script's arrays concatenated in order with its variables
filled in, and their scaled-down versions.

Used by tests/unit/training/test_config.py (every line through the real parser: accepted, or
refused for exactly the flags that cannot be honoured) and tests/distributed/test_megatron_flags.py
(two of them run end to end with --patch-size/--patch-fraction added).
"""
import shlex
from typing import Dict, List

LINES: Dict[str, str] = {
    "gpt3_175b": """
        --num-layers 96 --hidden-size 12288 --num-attention-heads 96 --seq-length 2048
        --max-position-embeddings 2048 --attention-backend auto
        --micro-batch-size 1 --global-batch-size 1536 --rampup-batch-size 16 16 5859375
        --train-iters 500000 --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95
        --init-method-std 0.006 --clip-grad 1.0 --fp16 --lr 6.0e-5 --lr-decay-style cosine
        --min-lr 6.0e-6 --lr-warmup-fraction .001 --lr-decay-iters 430000
        --tensor-model-parallel-size 8 --pipeline-model-parallel-size 16
        --data-path DATA --vocab-file VOCAB --merge-file MERGES --split 949,50,1
        --log-interval 100 --save-interval 10000 --eval-interval 1000 --save SAVE --load SAVE
        --eval-iters 10 --tensorboard-dir TB
    """,
    "llama3_8b_mock": """
        --use-mcore-models --num-layers 32 --hidden-size 4096 --ffn-hidden-size 14336
        --num-attention-heads 32 --group-query-attention --num-query-groups 8 --kv-channels 128
        --seq-length 8192 --max-position-embeddings 8192 --position-embedding-type rope
        --rotary-base 1000000 --rotary-percent 1.0 --attention-dropout 0.0 --hidden-dropout 0.0
        --swiglu --init-method-std 0.0134 --attention-backend fused --apply-layernorm-1p
        --untie-embeddings-and-output-weights --disable-bias-linear
        --micro-batch-size 1 --global-batch-size 128 --train-samples 1953125000
        --lr-decay-samples 1949218748 --lr-warmup-samples 3906252 --lr 0.00015 --min-lr 0.00001
        --decoupled-lr 5.0e-4 --decoupled-min-lr 4.5e-5 --lr-decay-style cosine --clip-grad 1.0
        --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --bf16 --grad-reduce-in-bf16
        --cross-entropy-loss-fusion --calculate-per-token-loss --manual-gc
        --empty-unused-memory-level 1 --exit-duration-in-mins 235
        --use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather
        --fp8-format hybrid --fp8-amax-history-len 1024 --fp8-amax-compute-algo max --fp8-param-gather
        --tensor-model-parallel-size 1 --context-parallel-size 1 --sequence-parallel
        --mock-data --tokenizer-type NullTokenizer --vocab-size 128256 --data-cache-path CACHE
        --tiktoken-pattern v2 --split 99,1,0 --no-create-attention-mask-in-dataloader
        --no-mmap-bin-files --num-workers 1
        --log-interval 1 --eval-iters 32 --eval-interval 100 --save-interval 1000 --log-throughput
        --profile --profile-step-start 4 --profile-step-end 6 --ckpt-format torch_dist
        --distributed-timeout-minutes 60 --save SAVE --load SAVE --tensorboard-dir TB
    """,
    "mixtral_8x7b": """
        --use-mcore-models --disable-bias-linear --seq-length 4096 --max-position-embeddings 32768
        --num-layers 32 --hidden-size 4096 --ffn-hidden-size 14336 --num-attention-heads 32
        --init-method-std 0.01 --attention-dropout 0.0 --hidden-dropout 0.0 --normalization RMSNorm
        --position-embedding-type rope --swiglu --untie-embeddings-and-output-weights
        --group-query-attention --num-query-groups 8 --no-masked-softmax-fusion
        --no-position-embedding --rotary-base 1000000
        --num-experts 8 --moe-router-topk 2 --moe-router-load-balancing-type aux_loss
        --moe-aux-loss-coeff 1e-2 --moe-grouped-gemm --moe-token-dispatcher-type alltoall
        --overlap-param-gather --overlap-grad-reduce
        --tokenizer-type Llama2Tokenizer --tokenizer-model TOKENIZER --data-path DATA --split 99990,8,2
        --micro-batch-size 1 --global-batch-size 256 --lr 1e-4 --train-iters 500000
        --lr-decay-iters 320000 --lr-decay-style cosine --min-lr 1.0e-5 --weight-decay 0.1
        --lr-warmup-iters 500 --clip-grad 1.0 --bf16
        --tensor-model-parallel-size 1 --pipeline-model-parallel-size 4
        --expert-model-parallel-size 8 --use-distributed-optimizer --sequence-parallel
        --log-interval 1 --save-interval 10000 --eval-interval 1000 --eval-iters 10
        --save SAVE --load SAVE --tensorboard-dir TB --no-load-optim --no-load-rng
    """,
}
# The real-data branch of the LLaMA-3 script: the same line with these data flags.
LINES["llama3_8b_data"] = LINES["llama3_8b_mock"].replace(
    "--mock-data --tokenizer-type NullTokenizer --vocab-size 128256 --data-cache-path CACHE\n"
    "        --tiktoken-pattern v2",
    "--data-path DATA --tokenizer-type HuggingFaceTokenizer --tokenizer-model TOKENIZER\n"
    "        --data-cache-path CACHE --vocab-size 128256")

# What each line asks for that this trainer cannot honour (refused, with the reason).
FP8 = {"--fp8-format", "--fp8-amax-history-len", "--fp8-amax-compute-algo", "--fp8-param-gather"}
PROFILE = {"--profile", "--profile-step-start", "--profile-step-end"}
REFUSED = {
    "gpt3_175b": {"--fp16", "--rampup-batch-size"},
    "llama3_8b_mock": {"--apply-layernorm-1p", "--decoupled-lr", "--decoupled-min-lr", *FP8, *PROFILE},
    "mixtral_8x7b": {"--num-experts", "--moe-router-topk", "--moe-router-load-balancing-type",
                     "--moe-aux-loss-coeff", "--moe-grouped-gemm", "--moe-token-dispatcher-type",
                     "--expert-model-parallel-size"},
}
REFUSED["llama3_8b_data"] = REFUSED["llama3_8b_mock"]

# Scaled down to a 2-process CPU run: sizes, budget and intervals, keeping the schedule's shape.
SCALE = {
    "--num-layers": "2", "--hidden-size": "64", "--ffn-hidden-size": "176",
    "--num-attention-heads": "4", "--num-query-groups": "2", "--kv-channels": "16",
    "--seq-length": "64", "--max-position-embeddings": "64", "--micro-batch-size": "1",
    "--global-batch-size": "8", "--vocab-size": "512", "--log-interval": "1", "--eval-iters": "1",
    "--eval-interval": "2", "--save-interval": "4", "--distributed-timeout-minutes": "5",
    "--tensor-model-parallel-size": "1", "--pipeline-model-parallel-size": "1",
    "--exit-duration-in-mins": "30",
    # gpt3: 500000 iterations, decay over 430000, warmup 0.1% of the decay.
    "--train-iters": "16", "--lr-decay-iters": "12", "--lr-warmup-fraction": "0.25",
    "--lr-warmup-iters": "1",
    # llama3: 1953125000 samples, decay over 99.8% of them, warmup over 0.2%.
    "--train-samples": "64", "--lr-decay-samples": "48", "--lr-warmup-samples": "8",
}


def argv(name: str, paths: Dict[str, str], scale: bool = False, drop_refused: bool = False,
         scale_over: Dict[str, str] = None) -> List[str]:
    """The line as an argv: DATA/SAVE/... filled from `paths`, optionally scaled down and without
    the refused flags (and their values)."""
    words = shlex.split(LINES[name])
    out: List[str] = []
    i = 0
    values = {**SCALE, **(scale_over or {})}
    while i < len(words):
        word = words[i]
        j = i + 1
        while j < len(words) and not words[j].startswith("--"):
            j += 1
        args = words[i + 1:j]
        i = j
        if drop_refused and word in REFUSED[name]:
            continue
        if scale and word in values and len(args) == 1:
            args = [values[word]]
        out += [word, *(paths.get(a, a) for a in args)]
    return out
