"""`tools/gpu_check.py`: the GPU path checked on one GPU in one command (< 5 minutes on H100/H200).

    python tools/gpu_check.py --output gpu_check.json
    python tools/gpu_check.py --smoke --output /tmp/gpu_check_smoke.json   # CPU, toy sizes

Prints a table and writes the report as JSON (atomically). Exit status 0 when every checked
part passed, 1 when one failed, 2 for a usage error (e.g. no GPU without --smoke). What each
part does: megatron_patch/bench/gpu_check.py; what it prints: docs/gpu.md.
"""
import argparse
import sys
import warnings

from megatron_patch import io


def build_parser() -> argparse.ArgumentParser:
    from megatron_patch.bench.gpu_check import PARTS

    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="where to write the JSON report")
    p.add_argument("--smoke", action="store_true",
                   help="run the same code paths on CPU at toy sizes (no GPU needed)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="run only these parts (default: all)")
    p.add_argument("--speed-micro-batch-size", type=int, default=None,
                   help="micro-batch of the 370M speed part (default 8 sequences of T=2048)")
    p.add_argument("--workdir", default=None,
                   help="keep the training part's data and runs here (default: a temporary "
                        "directory, removed at the end)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for pattern in (".*(Apex|apex|Transformer Engine|transformer_engine).*", ".*cuda_graph_scope.*",
                    ".*`load_state_dict` is deprecated.*", ".*deprecating ShardedTensor.*"):
        warnings.filterwarnings("ignore", message=pattern)
    from megatron_patch.bench.gpu_check import run_all

    try:
        report = run_all(args.smoke, workdir=args.workdir, parts=args.parts,
                         speed_micro_batch=args.speed_micro_batch_size)
    except ValueError as err:
        print(f"gpu_check.py: error: {err}", file=sys.stderr)
        return 2
    io.write_json(args.output, report)
    print(format_report(report))
    print(f"\nreport: {args.output}")
    return 0 if report["passed"] else 1


def format_report(report: dict) -> str:
    """The report as a plain-text table."""
    p = report["parts"]
    lines = [f"GPU check ({report['mode']}): {'PASSED' if report['passed'] else 'FAILED'} "
             f"in {report['total_seconds']:.1f} s (process-group init {report.get('init_seconds', 0):.1f} s)"]

    def mark(part):
        v = part.get("passed")
        return "info" if v is None else ("ok" if v else "FAIL")

    def header(name):
        part = p[name]
        lines.append("")
        lines.append(f"[{mark(part)}] {name} ({part['seconds']:.1f} s)")
        if "error" in part:
            lines.append(f"    error: {part['error']}")
            return False
        return True

    if "environment" in p and header("environment"):
        e = p["environment"]
        imp = lambda d: (f"yes ({d.get('version')})" if d["ok"] else "no")  # noqa: E731
        lines += [
            f"    torch {e['torch']} | CUDA {e['cuda']} | Python {e['python']} | megatron-core {e['megatron_core']}",
            f"    GPU: {e.get('gpu') or 'none (CPU)'}"
            + (f" ({e['gpu_memory_gib']:.0f} GiB, sm {e['compute_capability']})" if e.get("gpu") else ""),
            f"    Transformer Engine: {imp(e['transformer_engine'])} | flash-attn: {imp(e['flash_attn'])}"
            f" | apex: {imp(e['apex'])} | layer spec: {e['layer_spec']}",
        ]
    if "sdpa_flash" in p and header("sdpa_flash"):
        s = p["sdpa_flash"]
        lines.append(f"    causal bf16 SDPA {s['shape']} under FLASH_ATTENTION only: ran, "
                     f"max |flash - math fp32| = {s['max_abs_diff_vs_math_fp32']:.2e}; "
                     f"model core attention on flash: {s['model_core_attention']}")
    if "correctness" in p and header("correctness"):
        c = p["correctness"]
        lines.append(f"    {c['preset']}, T={c['positions']} x {c['micro_batch_size']}; tolerance: loss "
                     f"{c['loss_tolerance']:.0%}, gradients {c['grad_tolerance']:.0%}")
        lines.append(f"    {'K':>3} | {'loss fp32':>9} | {'loss bf16':>9} | {'rel diff':>8} | {'worst grad err':>14}")
        for r in c["rows"]:
            lines.append(f"    {r['patch_size']:>3} | {r['loss_fp32']:>9.4f} | {r['loss_bf16']:>9.4f} | "
                         f"{r['loss_rel_diff']:>8.1e} | {r['grad_rel_err_max']:>14.2e}")
    if "speed" in p and header("speed"):
        s = p["speed"]
        lines.append(f"    {s['preset']} ({s['params_m']:.1f}M params), bf16, T={s['positions']} positions x "
                     f"micro-batch {s['micro_batch_size']}, layer spec {s['layer_spec']}, median of {s['iters']}")
        lines.append(f"    {'K':>3} | {'fwd+bwd s':>9} | {'tokens/s':>10} | {'TFLOP/s':>7} | {'MFU':>5} | {'peak GiB':>8}")
        for r in s["rows"]:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
            lines.append(f"    {r['patch_size']:>3} | {r['step_s']:>9.4f} | {r['tokens_per_s']:>10.0f} | "
                         f"{r['tflops']:>7.2f} | {mfu:>5} | {r['peak_memory_gib']:>8.2f}")
        lines.append(f"    tokens/s K=4 / K=1 = {s['ratio_k4_over_k1']:.2f} (ideal 4; the paper: 3.5 on A100)")
        lines.append(f"    FLOPs: Megatron-LM's count; peak bf16 dense {s['device_peak_tflops'] or 'unknown'} TFLOP/s")
    if "training" in p and header("training"):
        t = p["training"]
        r = t["seconds_by_run"]
        lines += [
            f"    {t['steps']['patch (K=4)']} steps K=4 + {t['steps']['token (K=1)']} steps K=1: loss "
            f"{t['loss_first']:.3f} -> {t['loss_last']:.3f}",
            f"    stopped (--exit-interval) and relaunched with --load at {t['stopped_and_resumed_at']}: "
            f"max rel diff vs uninterrupted {t['resume_max_rel_diff']:.1e} (bitwise: {t['resume_bitwise']})",
            f"    bf16 vs fp32, step for step: max rel diff {t['bf16_vs_fp32_max_rel_diff']:.2%} "
            f"(tolerance {t['bf16_vs_fp32_tolerance']:.0%})",
            "    seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()),
        ]
    return "\n".join(lines)
