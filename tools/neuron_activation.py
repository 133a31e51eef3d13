"""Share of FFN neurons activated per layer with token input (K=1) and patch input (K), after
the paper's Fig. 8, for one checkpoint and one data sample.

Activated (see megatron_patch/analysis/activation.py): neuron j of a layer's SwiGLU FFN is
activated at a position when silu(gate_j) > --threshold (default 0), [gate; up] = linear_fc1(x).
A layer's share = activated (position, neuron) pairs / (positions x ffn_hidden_size). Both
inputs cover the same tokens: T*K token positions at K=1, T patch positions at K.

    # a trained model (a checkpoint directory, or a run directory: its token/ stage is used)
    python tools/neuron_activation.py --load runs/study/runs/K4-lam0.6667-same_tokens \\
        --data-path data/corpus_text_document --patch-size 4 --seq-length 1024 --num-samples 8 \\
        --csv out/neurons.csv --plot out/neurons.png
    # a random model, random tokens (no data): a smoke test
    python tools/neuron_activation.py --random-init --model tiny --random-tokens --plot /tmp/n.png

Prints a Markdown table (or CSV with --format csv) to stdout. Runs as one process on CPU or
one GPU (TP = PP = 1; a checkpoint saved at any TP/PP loads here).
"""
import argparse
import contextlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from megatron_patch.analysis.activation import DEFINITION, activation_shares  # noqa: E402
from megatron_patch.analysis.io import save_figure, write_text  # noqa: E402

TRACKER = "latest_checkpointed_iteration.txt"


def get_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--load", help="checkpoint directory (holds latest_checkpointed_iteration.txt) "
                     "or a run directory (its token/ stage, else patch/)")
    src.add_argument("--random-init", action="store_true", help="a randomly initialised --model")
    ap.add_argument("--model", default="tiny", help="preset for --random-init")
    data = ap.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-path", help="Megatron prefix (without .bin/.idx) to read the sample from")
    data.add_argument("--random-tokens", action="store_true", help="uniform random token ids")
    ap.add_argument("--start-document", type=int, default=0,
                    help="first document of the sample (documents are concatenated)")
    ap.add_argument("--patch-size", type=int, default=4, help="K compared with K=1")
    ap.add_argument("--seq-length", type=int, default=256, help="tokens per sequence (multiple of K)")
    ap.add_argument("--num-samples", type=int, default=4, help="sequences in the sample")
    ap.add_argument("--micro-batch-size", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=0.0, help="activated: silu(gate) > threshold")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    ap.add_argument("--csv", help="also write the table as CSV here")
    ap.add_argument("--plot", help="write a PNG here")
    args = ap.parse_args(argv)
    if args.patch_size < 2:
        ap.error("--patch-size must be >= 2 (it is compared with K=1)")
    if args.seq_length < 1 or args.seq_length % args.patch_size:
        ap.error(f"--seq-length {args.seq_length} must be a positive multiple of --patch-size {args.patch_size}")
    if args.num_samples < 1 or args.micro_batch_size < 1:
        ap.error("--num-samples and --micro-batch-size must be >= 1")
    return args


def resolve_checkpoint_dir(path: str) -> str:
    """A checkpoint directory; a run directory maps to its final stage (token/, else patch/)."""
    if not os.path.isdir(path):
        raise SystemExit(f"error: --load {path}: no such directory")
    if os.path.isfile(os.path.join(path, TRACKER)):
        return path
    for sub in ("token", "patch"):
        if os.path.isfile(os.path.join(path, sub, TRACKER)):
            return os.path.join(path, sub)
    raise SystemExit(f"error: --load {path}: no {TRACKER} there or in token/ or patch/; pass a "
                     "checkpoint directory written by tools/pretrain.py")


def build(args, device):
    """(model, model config, description) on `device`, in fp32."""
    from megatron_patch.config import ParallelConfig, get_preset
    from megatron_patch.model import build_model

    par = ParallelConfig()
    if args.random_init:
        try:
            cfg = get_preset(args.model, transformer_impl="auto")
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        model = build_model(cfg, par, patch_size=args.patch_size)
        return model.to(device), cfg, f"random init ({args.model}, seed {args.seed})"
    from megatron_patch.training.checkpointing import (
        CheckpointError,
        checkpoint_config,
        load_weights,
        require_checkpoint,
    )

    ckpt_dir = resolve_checkpoint_dir(args.load)  # checked again: cheap, and build() stands alone
    try:
        path = require_checkpoint(ckpt_dir)
        cfg = checkpoint_config(path).model
        cfg.transformer_impl = "auto"  # same weights under every layer spec
        model = build_model(cfg, par, patch_size=args.patch_size)
        load_weights(path, [model], cfg)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    return model.to(device), cfg, f"checkpoint {path}"


def check_data_path(prefix: str) -> None:
    missing = [prefix + e for e in (".bin", ".idx") if not os.path.isfile(prefix + e)]
    if missing:
        raise SystemExit(f"error: --data-path {prefix}: {' and '.join(missing)} not found "
                         "(pass the prefix written by tools/preprocess_data.py)")


def read_sample(args, vocab_size: int) -> torch.Tensor:
    """[num_samples, seq_length] token ids."""
    need = args.num_samples * args.seq_length
    if args.random_tokens:
        g = torch.Generator().manual_seed(args.seed)
        return torch.randint(0, vocab_size, (args.num_samples, args.seq_length), generator=g)
    check_data_path(args.data_path)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(args.data_path)
    pieces, have = [], 0
    for i in range(args.start_document, len(ds)):
        doc = np.asarray(ds[i], dtype=np.int64)
        pieces.append(doc)
        have += doc.size
        if have >= need:
            break
    if have < need:
        raise SystemExit(f"error: {args.data_path} has {have} tokens from document "
                         f"{args.start_document} on, the sample needs {need} "
                         "(lower --num-samples or --seq-length)")
    tokens = np.concatenate(pieces)[:need]
    if tokens.max() >= vocab_size:
        raise SystemExit(f"error: the data holds token id {int(tokens.max())} >= the model's "
                         f"vocabulary {vocab_size}: data and checkpoint use different tokenizers")
    return torch.from_numpy(tokens).view(args.num_samples, args.seq_length)


def table_rows(shares: dict, K: int) -> list:
    rows = [{"layer": i + 1, "share_K1": a, f"share_K{K}": b, "diff": b - a}
            for i, (a, b) in enumerate(zip(shares[1], shares[K]))]
    mean_1, mean_k = float(np.mean(shares[1])), float(np.mean(shares[K]))
    rows.append({"layer": "mean", "share_K1": mean_1, f"share_K{K}": mean_k, "diff": mean_k - mean_1})
    return rows


def to_csv(rows: list) -> str:
    keys = list(rows[0])
    lines = [",".join(keys)]
    for r in rows:
        lines.append(",".join(str(r[k]) if isinstance(r[k], (int, str)) else f"{r[k]:.6f}" for k in keys))
    return "\n".join(lines) + "\n"


def to_markdown(rows: list, K: int, header: str) -> str:
    lines = [header, "", f"| layer | share K=1 | share K={K} | K={K} - K=1 |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['share_K1']:.4f} | {r[f'share_K{K}']:.4f} | {r['diff']:+.4f} |")
    return "\n".join(lines) + "\n"


def plot(shares: dict, K: int, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.arange(1, len(shares[1]) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(layers, np.array(shares[1]) * 100, marker="o", label="token input (K=1)")
    ax.plot(layers, np.array(shares[K]) * 100, marker="s", label=f"patch input (K={K})")
    ax.set_xlabel("layer")
    ax.set_ylabel("activated FFN neurons (%)")
    ax.set_xticks(layers)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    args = get_args(argv)
    # Input errors first, before megatron-core is imported and a process group started.
    if args.load:
        resolve_checkpoint_dir(args.load)
    if args.data_path:
        check_data_path(args.data_path)
    from megatron_patch import distributed
    from megatron_patch.config import ParallelConfig

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    distributed.initialize(ParallelConfig(), seed=args.seed)  # a world of one (checkpoint loading)
    try:
        # stdout carries only the table (the layer-spec notice and the like go to stderr).
        with contextlib.redirect_stdout(sys.stderr):
            model, cfg, source = build(args, device)
            tokens = read_sample(args, cfg.vocab_size).to(device)
            K = args.patch_size
            shares = activation_shares(model, tokens, [1, K], args.threshold, args.micro_batch_size)
    finally:
        distributed.destroy()
    rows = table_rows(shares, K)
    data = args.data_path or f"random tokens (seed {args.seed})"
    header = (f"FFN neuron activation: {source}; data {data}; {args.num_samples} x "
              f"{args.seq_length} tokens\nActivated: {DEFINITION.format(threshold=args.threshold)}")
    if args.format == "csv":
        print(to_csv(rows), end="")
    else:
        print(to_markdown(rows, K, header), end="")
    if args.csv:
        write_text(args.csv, to_csv(rows))
    if args.plot:
        plot(shares, K, args.plot, f"{source}\nactivated: silu(gate) > {args.threshold:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
