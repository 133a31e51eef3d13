"""The patch-level training idea, in two functions (Shao, Meng, Zhou 2024).

- `patch_embedding`: the input of patch i is the plain mean of the embeddings of its K tokens
  (no new parameters). A sample of T*K tokens becomes T transformer positions.
- `patch_cross_entropy`: the output of patch i predicts each of the K tokens of patch i+1
  through the one shared output layer. One log-softmax per position, K gathered target logits:
      loss[i, k] = w_k * (logsumexp(logits_i) - logits_i[y_{i,k}])
  With the paper's uniform weights (w_k = 1) its mean is 1/K * sum_k CE(logits_i, x[(i+1)K + k]);
  `target_decay` R < 1 weighs target k by R**k (normalised to average 1).

K = 1 is ordinary next-token training. Everything else (the transformer, tensor/pipeline/data
parallelism, checkpoints) is megatron-core's, untouched.
"""
import torch
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.tensor_parallel import (
    get_cuda_rng_tracker,
    scatter_to_sequence_parallel_region,
)


MEAN_DTYPES = ("fp32", "param")


def _patch_mean(emb: torch.Tensor, dim: int, mean_dtype: str) -> torch.Tensor:
    """Mean over `dim` (the K tokens of each patch), returned in emb's dtype.

    "fp32": accumulated in fp32 and rounded once. bf16 keeps 8 significant bits (relative
    rounding error u = 2^-8): an fp32 sum adds errors of order 2^-24 and the one final rounding
    costs at most u, as close as a bf16 activation can be. The casts are free in fp32.
    "param": a running sum in emb's dtype, rounded after each of the K-1 additions, then divided
    by K; under bf16 its error grows with K (up to about (K-1)u + u). torch's own `mean` of a
    bf16 tensor accumulates in fp32, so this is spelled out as additions."""
    if mean_dtype == "fp32":
        return emb.float().mean(dim=dim).to(emb.dtype)
    if mean_dtype != "param":
        raise ValueError(f"mean_dtype must be one of {MEAN_DTYPES}, got {mean_dtype!r}")
    parts = emb.unbind(dim)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total / len(parts)


def target_weights(patch_size: int, decay: float) -> torch.Tensor:
    """[K] fp32 weights of a patch's K targets: target k (k = 0 right after the patch boundary)
    weighs decay**k, normalised to average 1, so the loss keeps its scale. decay = 1: all ones."""
    w = torch.tensor([decay ** k for k in range(patch_size)], dtype=torch.float64)
    return (w * (patch_size / w.sum())).float()


def patch_embedding(embedding: LanguageModelEmbedding, input_ids: torch.Tensor, patch_size: int,
                    mean_dtype: str = "fp32"):
    """Embed [b, T*K] tokens and average each K consecutive embeddings: returns [T, b, h].

    Uses `embedding.word_embeddings` (megatron-core's vocab-parallel embedding) so checkpoint
    keys are those of the token model. With sequence parallel and RoPE the embedding is already
    reduce-scattered along the sequence ([T*K/tp, b, h]); every rank's slice then holds whole
    patches because T is divisible by TP (checked by the config), so the mean is local.
    """
    K = patch_size
    b, s = input_ids.shape
    if s % K:
        raise ValueError(f"input length {s} is not a multiple of patch_size {K}")
    config = embedding.config
    emb = embedding.word_embeddings(input_ids)
    # By default the mean is accumulated in fp32 and rounded once (see _patch_mean).
    if embedding.reduce_scatter_embeddings:
        emb = _patch_mean(emb.view(-1, K, b, emb.size(-1)), 1, mean_dtype)  # [T/tp, b, h]
    else:
        emb = _patch_mean(emb.view(b, s // K, K, emb.size(-1)), 2, mean_dtype)  # [b, T, h]
        if embedding.add_position_embedding:
            positions = torch.arange(s // K, device=input_ids.device)
            emb = emb + embedding.position_embeddings(positions)
        emb = emb.transpose(0, 1).contiguous()  # [T, b, h]
    if config.fp32_residual_connection:
        emb = emb.float()
    if config.sequence_parallel:
        if not embedding.reduce_scatter_embeddings and embedding.scatter_to_sequence_parallel:
            emb = scatter_to_sequence_parallel_region(emb, group=embedding.tp_group)
        with get_cuda_rng_tracker().fork():
            return embedding.embedding_dropout(emb)
    return embedding.embedding_dropout(emb)


class _VocabParallelPatchCrossEntropy(torch.autograd.Function):
    """Cross-entropy of one vocab-parallel distribution per position against K targets.

    logits: [T, b, V/tp] (this rank's vocab slice, fp32 or bf16); targets: [T, b, K] global ids.
    Everything is computed in fp32 whatever the logits' dtype: a bf16 logsumexp over a 32k
    vocabulary would carry an error of ~1e-2 nats. Communication: one max all-reduce, one
    sum-of-exp all-reduce, one all-reduce of the K target logits. Memory: one [T, b, V/tp] fp32
    buffer (the softmax saved for backward; bf16 logits are upcast straight into it, never
    copied to fp32 first); the K targets never copy the logits. The gradient is returned in the
    logits' dtype.
    """

    @staticmethod
    def forward(ctx, logits, targets, tp_group):
        tp_size = torch.distributed.get_world_size(tp_group) if tp_group is not None else 1
        tp_rank = torch.distributed.get_rank(tp_group) if tp_group is not None else 0
        local_vocab = logits.size(-1)
        vocab_start = tp_rank * local_vocab
        ctx.logits_dtype = logits.dtype

        # The max is one of the logits, so it is exact in any dtype.
        logits_max = logits.max(dim=-1, keepdim=True)[0].float()
        if tp_size > 1:
            torch.distributed.all_reduce(logits_max, torch.distributed.ReduceOp.MAX, group=tp_group)
        # A new fp32 buffer (type promotion upcasts bf16 logits elementwise): the caller's logits
        # are never modified (megatron-core's cross-entropy edits them in place).
        softmax = logits - logits_max

        local_targets = targets - vocab_start
        outside = (local_targets < 0) | (local_targets >= local_vocab)
        local_targets = local_targets.masked_fill(outside, 0)
        target_logits = softmax.gather(-1, local_targets).masked_fill_(outside, 0.0)

        softmax.exp_()
        sum_exp = softmax.sum(dim=-1, keepdim=True)
        if tp_size > 1:
            torch.distributed.all_reduce(sum_exp, group=tp_group)
            torch.distributed.all_reduce(target_logits, group=tp_group)
        softmax.div_(sum_exp)

        loss = torch.log(sum_exp) - target_logits  # [T, b, K]
        ctx.save_for_backward(softmax, local_targets, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_targets, outside = ctx.saved_tensors
        # d/dz sum_k g_k * (logsumexp(z) - z[y_k]) = softmax * sum_k g_k - sum_k onehot(y_k) g_k
        grad = softmax.mul_(grad_loss.sum(dim=-1, keepdim=True))
        grad.scatter_add_(-1, local_targets, -grad_loss.float().masked_fill(outside, 0.0))
        return grad.to(ctx.logits_dtype), None, None


def patch_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, patch_size: int, tp_group=None,
                        target_decay: float = 1.0):
    """Per-target loss [b, T*K] from vocab-parallel logits [T, b, V/tp] and labels [b, T*K].

    Entry i*K + k is the cross-entropy of patch i's distribution against labels[:, i*K + k]
    (the data puts the next patch's tokens there), times the weight of target k
    (`target_weights`: 1 for the paper's uniform weights, where nothing is multiplied).
    Computed in fp32 for fp32 and bf16 logits alike (the upcast happens inside, into the one
    buffer the loss needs); the loss is fp32.
    """
    T, b, _ = logits.shape
    K = patch_size
    if labels.shape != (b, T * K):
        raise ValueError(f"labels shape {tuple(labels.shape)} != (batch, T*K) = {(b, T * K)}")
    targets = labels.view(b, T, K).transpose(0, 1).contiguous()  # [T, b, K]
    loss = _VocabParallelPatchCrossEntropy.apply(logits, targets, tp_group)
    if target_decay != 1.0:
        loss = loss * target_weights(K, target_decay).to(loss.device)  # broadcast over [T, b, K]
    return loss.transpose(0, 1).reshape(b, T * K)
