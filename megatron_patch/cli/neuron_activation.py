"""Share of FFN neurons activated per layer, after the paper's Fig. 8: several models each at its
own K, or one model with token input (K=1) against patch input (K).

Activated (`--definition paper`, the default; see megatron_patch/analysis/activation.py): a
neuron of layer l is one of the h outputs of its FFN (after linear_fc2), activated at a position
when |value| > --threshold (default 0.5); a layer's share = activated (position, neuron) pairs /
(positions x h). `--definition gate`: silu(gate_j) > --threshold (default 0) of the SwiGLU gate.

    # the paper's figure: models trained with different K, each at its own K (from its run config)
    python tools/neuron_activation.py --load runs/study/runs/token-1.0x \\
        runs/study/runs/K2-lam0.6667-same_tokens/patch runs/study/runs/K4-lam0.6667-same_tokens/patch \\
        --data-path data/corpus_text_document --seq-length 1024 --num-samples 8 \\
        --csv out/neurons.csv --plot out/neurons.png
    # one model, token input against patch input of --patch-size K
    python tools/neuron_activation.py --load runs/study/runs/K4-lam0.6667-same_tokens/patch \\
        --data-path data/corpus_text_document --patch-size 4 --seq-length 1024 --num-samples 8
    # a random model, random tokens (no data): a smoke test
    python tools/neuron_activation.py --random-init --model tiny --random-tokens --plot /tmp/n.png

`--load` takes checkpoint directories, iter_*/release directories or run directories (their last
stage), optionally as NAME=PATH. Prints a Markdown table (or CSV with --format csv) to stdout.
Runs as one process on CPU or one GPU (TP = PP = 1; a checkpoint saved at any TP/PP loads here).
"""
import argparse
import contextlib
import sys

from megatron_patch.analysis import activation, activation_report
from megatron_patch.training.rundir import CheckpointError

DEFAULT_PATCH_SIZE = 4


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--load", nargs="+", metavar="[NAME=]PATH",
                     help="checkpoint or run directories; one: K=1 against --patch-size, several: "
                     "each at its own K")
    src.add_argument("--random-init", action="store_true", help="a randomly initialised --model")
    ap.add_argument("--model", default="tiny", help="preset for --random-init")
    data = ap.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-path", help="Megatron prefix (without .bin/.idx) to read the sample from")
    data.add_argument("--random-tokens", action="store_true", help="uniform random token ids")
    ap.add_argument("--start-document", type=int, default=0,
                    help="first document of the sample (documents are concatenated)")
    ap.add_argument("--definition", choices=activation.DEFINITIONS, default="paper",
                    help="paper: |FFN output| > threshold; gate: silu(SwiGLU gate) > threshold")
    ap.add_argument("--threshold", type=float, default=None,
                    help="activation threshold (default: 0.5 for paper, 0 for gate)")
    ap.add_argument("--patch-size", type=int, default=None,
                    help=f"one model: K compared with K=1 (default {DEFAULT_PATCH_SIZE})")
    ap.add_argument("--seq-length", type=int, default=256, help="tokens per sequence (multiple of every K)")
    ap.add_argument("--num-samples", type=int, default=4, help="sequences in the sample")
    ap.add_argument("--micro-batch-size", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--format", choices=["markdown", "csv"], default="markdown")
    ap.add_argument("--csv", help="also write the table as CSV here")
    ap.add_argument("--plot", help="write a PNG here")
    return ap


def get_args(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    args.models = _named(ap, args.load or [])
    if len(args.models) > 1:
        if args.patch_size is not None:
            ap.error("--patch-size is for one model; several models each run at their own K")
    else:
        args.patch_size = args.patch_size or DEFAULT_PATCH_SIZE
        if args.patch_size < 2:
            ap.error("--patch-size must be >= 2 (it is compared with K=1)")
        if args.seq_length % args.patch_size:
            ap.error(f"--seq-length {args.seq_length} must be a positive multiple of --patch-size {args.patch_size}")
    if args.seq_length < 1:
        ap.error("--seq-length must be >= 1")
    if args.num_samples < 1 or args.micro_batch_size < 1:
        ap.error("--num-samples and --micro-batch-size must be >= 1")
    args.threshold = activation.threshold_for(args.definition, args.threshold)
    return args


def _named(ap, items):
    """[(name, path)] from PATH or NAME=PATH items; names must differ."""
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = activation.model_name(item), item
        out.append((name, path))
    names = [n for n, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        ap.error(f"--load names {dupes} more than once; give them as NAME=PATH")
    return out


def measure(args):
    """Load the models and the sample, and measure. Returns (result, description of the source)."""
    from megatron_patch import device

    dev = device.current()
    models = []
    if args.random_init:
        from megatron_patch.config import ParallelConfig, get_preset
        from megatron_patch.model import build_model

        cfg = get_preset(args.model, transformer_impl="auto")
        model = build_model(cfg, ParallelConfig(), patch_size=args.patch_size).to(dev)
        models.append((args.model, model, args.patch_size, cfg.vocab_size))
        source = f"random init ({args.model}, seed {args.seed})"
    else:
        for name, path in args.models:
            model, K, vocab, ckpt = activation.load_checkpoint_model(path, args.patch_size, dev)
            models.append((name, model, K, vocab))
        source = ("checkpoint " + ckpt if len(models) == 1 else
                  "models " + ", ".join(f"{n} ({p})" for n, p in args.models))
    vocab = min(v for *_, v in models)
    if args.random_tokens:
        tokens = activation.random_sample(args.num_samples, args.seq_length, vocab, args.seed)
    else:
        tokens = activation.read_sample(args.data_path, args.num_samples, args.seq_length, vocab,
                                        args.start_document)
    tokens = tokens.to(dev)
    if len(models) == 1:
        _, model, _, _ = models[0]
        return activation.activation_shares(model, tokens, [1, args.patch_size], args.threshold,
                                            args.micro_batch_size, args.definition), source
    measured = activation.compare_models([(n, m, K) for n, m, K, _ in models], tokens,
                                         args.threshold, args.micro_batch_size, args.definition)
    return measured, source


def main(argv=None) -> int:
    args = get_args(argv)
    from megatron_patch.training import rundir

    try:  # input errors first, before megatron-core is imported and a process group started
        for _, path in args.models:
            rundir.resolve_checkpoint(path)
        if args.data_path:
            from megatron_patch.data.paths import check_prefix

            check_prefix(args.data_path)
    except (ValueError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    from megatron_patch import distributed
    from megatron_patch.config import ParallelConfig

    distributed.initialize(ParallelConfig(), seed=args.seed)  # a world of one (checkpoint loading)
    try:
        # stdout carries only the table (the layer-spec notice and the like go to stderr).
        with contextlib.redirect_stdout(sys.stderr):
            result, source = measure(args)
    except ValueError as err:  # CheckpointError included
        raise SystemExit(f"error: {err}") from None
    finally:
        distributed.destroy()
    data = args.data_path or f"random tokens (seed {args.seed})"
    header = (f"FFN neuron activation ({args.definition}): {source}; data {data}; {args.num_samples} x "
              f"{args.seq_length} tokens\nActivated: {activation.describe(args.definition, args.threshold)}")
    title = f"{source}\nactivated ({args.definition}): threshold {args.threshold:g}"
    if isinstance(result, dict):  # one model: K=1 against K
        K = args.patch_size
        rows = activation_report.inputs_rows(result, K)
        table = activation_report.inputs_markdown(rows, K, header)
    else:
        rows = activation_report.models_rows(result)
        table = activation_report.models_markdown(rows, result, header)
        title = f"activated FFN neurons ({args.definition}, threshold {args.threshold:g}), each model at its K"
    print(activation_report.to_csv(rows) if args.format == "csv" else table, end="")
    if args.csv:
        from megatron_patch.io import write_text

        write_text(args.csv, activation_report.to_csv(rows))
    if args.plot:
        if isinstance(result, dict):
            activation_report.plot_inputs(result, args.patch_size, args.plot, title)
        else:
            activation_report.plot_models(result, args.plot, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
