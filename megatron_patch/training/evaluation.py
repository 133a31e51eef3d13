"""Token-level loss and perplexity of a checkpoint on a dataset's validation split.

The trainer's validation uses the same code: the weights run as a K = 1 model on token-level
samples (patch_size 1, the run's seq_length), so numbers from tools/evaluate.py and the
`val_loss` records of metrics.jsonl agree for the same data, split, seed and batch count.
With K > 1 the patch-level loss (the patch stage's objective) is reported as well.
"""
import dataclasses
import math
from typing import Optional

from megatron.core import parallel_state

from megatron_patch import device
from megatron_patch.config import validate_for
from megatron_patch.data.paths import check_data_paths
from megatron_patch.training import checkpointing as ckpt
from megatron_patch.training.builders import build_chunks
from megatron_patch.training import rundir
from megatron_patch.training.rundir import resolve_checkpoint
from megatron_patch.training.data import StepBatches, build_datasets
from megatron_patch.training.stages import Stage
from megatron_patch.training.step import evaluate, token_level


def _loss_on(cfg, chunks, stage: Stage) -> dict:
    """Mean loss of `chunks` run at K = stage.patch_size on the validation split."""
    _, valid = build_datasets(cfg, stage, 0, stage, stage.train_iters * stage.global_batch_size)
    if valid is None:
        raise ValueError(f"the validation split of --split {cfg.data.split} is empty; give it a share")
    for c in chunks:
        c.patch_size = stage.patch_size
    return evaluate(chunks, StepBatches(valid, stage).steps(stage.train_iters), stage)


class Evaluator:
    """Token-level validation during training: every --eval-interval steps and at a stage's end."""

    def __init__(self, model: list, batches: Optional[StepBatches], interval: Optional[int], logger):
        self.model = model
        self.batches = batches  # None: --eval-iters 0, no validation
        self.interval = interval
        self.logger = logger

    def due(self, step: int) -> bool:
        return self.batches is not None and bool(self.interval) and step % self.interval == 0

    def run(self, stage: Stage, state) -> Optional[dict]:
        """Validate, write an eval record; returns it (None without validation data)."""
        if self.batches is None:
            return None
        ev = self.batches.stage
        with token_level(self.model):
            result = evaluate(self.model, self.batches.steps(ev.train_iters), ev)
        record = {"kind": "eval", "stage": stage.name, "patch_size": stage.patch_size,
                  "step": state.step, "val_loss": result["loss"], "val_ppl": result["ppl"],
                  **state.cumulative()}
        self.logger.write(record)
        return record


def evaluate_checkpoint(load: str, data_path, tokenizer_model: str, parallel, patch_size: int = 1,
                        split: Optional[str] = None, seq_length: Optional[int] = None,
                        micro_batch_size: Optional[int] = None, global_batch_size: Optional[int] = None,
                        eval_iters: Optional[int] = None, tokenizer_type: Optional[str] = None,
                        vocab_size: Optional[int] = None, vocab_file: Optional[str] = None,
                        merge_file: Optional[str] = None) -> dict:
    """{"loss", "ppl", "tokens"} at token level (+ "patch_loss", "patch_ppl" when K > 1).

    Defaults (seq_length, batch sizes, seed) come from the checkpoint's config. On the run's own
    data the split and number of batches are the run's too, so the result equals its last
    val_loss; other data counts as held out: split "0,1,0" and every sample of it once.
    Needs process groups for `parallel`.
    """
    from megatron_patch.data import load_tokenizer

    path = resolve_checkpoint(load)
    cfg = ckpt.checkpoint_config(path)
    check_data_paths(data_path)
    vocab = load_tokenizer(tokenizer_model, tokenizer_type=tokenizer_type, vocab_size=vocab_size,
                           vocab_file=vocab_file, merge_file=merge_file).vocab_size
    if vocab != cfg.model.vocab_size:
        raise rundir.CheckpointError(
            f"tokenizer {tokenizer_model or vocab_file} has {vocab} tokens but checkpoint {path} was trained with "
            f"vocab_size {cfg.model.vocab_size}; pass the run's tokenizer"
        )
    cfg.parallel = dataclasses.replace(parallel)
    # The run's own data: its validation split and batch count (= its val_loss records).
    # Other data is held out: all of it is validation, evaluated once through.
    same_data = list(data_path) == list(cfg.data.data_path)
    split = split or (cfg.data.split if same_data else "0,1,0")
    cfg.data = dataclasses.replace(cfg.data, data_path=list(data_path), tokenizer_model=tokenizer_model,
                                   tokenizer_type=tokenizer_type, vocab_size=vocab_size,
                                   vocab_file=vocab_file, merge_file=merge_file, mock_data=False,
                                   split=split, cache_dir=cfg.data.cache_dir if same_data else None)
    t = cfg.train
    seq = seq_length or t.seq_length
    mbs = micro_batch_size or t.micro_batch_size
    gbs = global_batch_size or t.global_batch_size
    iters = eval_iters or (t.eval_iters if same_data else None)
    if iters is None:
        from megatron_patch.data import split_token_counts

        valid_tokens = split_token_counts(list(data_path), split)[1]
        iters = max(1, (valid_tokens - 1) // (seq * gbs))
    dp = parallel_state.get_data_parallel_world_size()
    if gbs % (mbs * dp):
        raise ValueError(f"--global-batch-size {gbs} is not a multiple of micro batch {mbs} x DP {dp}")
    validate_for(cfg.model, cfg.parallel, 1, seq)
    dtype = device.compute_dtype(t.bf16)
    chunks = build_chunks(cfg, 1, dtype)
    for c in chunks:
        c.config.calculate_per_token_loss = True
    ckpt.load_weights(path, chunks, cfg.model)

    token = _loss_on(cfg, chunks, Stage("eval", 1, iters, gbs, mbs, seq, (0.0, 1.0), 0))
    out = {"checkpoint": path, "loss": token["loss"], "ppl": token["ppl"], "tokens": token["tokens"],
           "split": split, "eval_iters": iters}
    if patch_size > 1:
        pseq = t.patch_seq_length if (patch_size == t.patch_size and t.patch_seq_length) else seq
        validate_for(cfg.model, cfg.parallel, patch_size, pseq)
        patch = _loss_on(cfg, chunks, Stage("eval", patch_size, iters, gbs, mbs, pseq, (0.0, 1.0), 0))
        out.update(patch_size=patch_size, patch_loss=patch["loss"],
                   patch_ppl=math.exp(min(patch["loss"], 50.0)), patch_tokens=patch["tokens"])
    return out
