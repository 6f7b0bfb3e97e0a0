"""`pangu-pro bench model`: forward / train-step time, PanGu-pi module overhead, cached vs uncached decoding.

Every number is the median of repeated calls after the graph has been compiled (compile time is
reported separately). Results go to benchmarks/results/model.json and model.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from pangu_pro.config import ModelConfig, load_config
from pangu_pro.io import atomic_write_json, atomic_write_text, read_json

REPO = Path(__file__).resolve().parents[2]
# The reference LLaMA shape (~23M parameters): hidden 384, 6 layers, ffn 1024, vocab 16k.
MEDIUM = ModelConfig(vocab_size=16000, hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1024,
                     seq_length=256, aug_shortcut_ratio=32)

# (siaf, aug_shortcut) of each variant the module-overhead timings compare
VARIANTS = {"llama": (False, False), "siaf": (True, False), "aug_shortcut": (False, True), "both": (True, True)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny_cpu.yaml"), help="small config to time")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (medians)")
    parser.add_argument("--overhead-rounds", type=int, default=12,
                        help="alternated rounds of the four module variants (paired ratios to LLaMA)")
    parser.add_argument("--decode-tokens", type=int, default=256)
    parser.add_argument("--pro-config", default=str(REPO / "configs" / "pangu_1b_pro.yaml"),
                        help="the 1B Pro shape whose forward (batch 1, --seq) is timed per PanGu-pi module")
    parser.add_argument("--skip-pro", action="store_true", help="skip the 1B Pro forward timings (~4 GB each)")
    parser.add_argument("--pro-only", action="store_true",
                        help="time only the 1B Pro forwards and add them to the results at --out (its other rows "
                        "kept, the table says they come from a separate run)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "model"),
                        help="output path without extension (.json and .md are written)")


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds, median of `repeats` later calls)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def time_forward_and_step(cfg: ModelConfig, batch: int, seq: int, repeats: int) -> dict:
    import mindspore as ms
    from mindspore import Tensor, nn

    from pangu_pro.model import PanGuPiForCausalLM, PanGuPiWithLoss
    from pangu_pro.model.params import count_parameters

    ms.set_seed(0)
    model = PanGuPiForCausalLM(cfg)
    ids = Tensor(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32))
    forward_ids = ids[:, :-1]
    compile_fwd, forward = timed(lambda: model(forward_ids).asnumpy(), repeats)
    step = nn.TrainOneStepCell(PanGuPiWithLoss(model), nn.AdamWeightDecay(model.trainable_params(), 1e-4))
    compile_step, train_step = timed(lambda: step(ids).asnumpy(), repeats)
    return {"parameters": count_parameters(cfg).total, "batch": batch, "seq": seq,
            "forward_s": forward, "train_step_s": train_step,
            "train_tokens_per_s": batch * seq / train_step,
            "first_forward_s": compile_fwd, "first_step_s": compile_step}


def padded_recompute_ms(model, prompt: np.ndarray, new_tokens: int) -> float:
    """ms/token decoding by a full forward over the whole padded window per token (one graph)."""
    from mindspore import Tensor

    width = prompt.shape[1] + new_tokens
    window = np.zeros((prompt.shape[0], width), np.int32)
    window[:, :prompt.shape[1]] = prompt
    model(Tensor(window)).asnumpy()  # compile
    start = time.perf_counter()
    for pos in range(prompt.shape[1], width):
        window[:, pos] = model(Tensor(window)).asnumpy()[:, pos - 1].argmax(-1)
    return 1e3 * (time.perf_counter() - start) / new_tokens


def time_decoding(cfg: ModelConfig, batch: int, new_tokens: int, repeats: int = 1) -> dict:
    """Per-token latency with the KV cache vs a full padded forward per token (both compiled once)."""
    import mindspore as ms

    from pangu_pro.model import PanGuPiForCausalLM
    from pangu_pro.model.generation import Generator, SamplingConfig

    ms.set_seed(0)
    cfg = dataclasses.replace(cfg, seq_length=max(cfg.seq_length, new_tokens + 16))
    model = PanGuPiForCausalLM(cfg)
    prompts = [[1, 2, 3, 4]] * batch
    generator = Generator(model)
    sampling = SamplingConfig(max_new_tokens=new_tokens)
    generator.generate(prompts, SamplingConfig(max_new_tokens=2))  # compile prefill and decode
    start = time.perf_counter()
    generator.generate(prompts, sampling)
    cached = (time.perf_counter() - start) / new_tokens

    # uncached: recompute the whole padded window for every new token
    uncached = padded_recompute_ms(model, np.zeros((batch, 16), np.int32), new_tokens) / 1e3
    return {"batch": batch, "new_tokens": new_tokens, "cached_ms_per_token": 1e3 * cached,
            "uncached_ms_per_token": 1e3 * uncached, "cached_tokens_per_s": batch / cached,
            "uncached_tokens_per_s": batch / uncached, "speedup": uncached / cached}


def module_overhead(cfg: ModelConfig, batch: int, seq: int, repeats: int, new_tokens: int) -> dict:
    """Forward, train step and decode of SIAF and AugShortcut against plain LLaMA of the same shape
    (paper: +2.6% / +1.3% decode latency). All four variants are built and compiled first, then timed
    in alternation, `repeats` rounds. A variant's overhead is the median over rounds of its time divided
    by LLaMA's in the same round (with the quartiles): this machine drifts by 2x between minutes, so
    only times taken side by side compare."""
    import mindspore as ms
    from mindspore import Tensor, nn

    from pangu_pro.model import PanGuPiForCausalLM, PanGuPiWithLoss
    from pangu_pro.model.generation import Generator, SamplingConfig

    ids = Tensor(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32))
    forward_ids = ids[:, :-1]
    prompts = [[1, 2, 3, 4]]
    runs = {}
    for name, (siaf, aug) in VARIANTS.items():
        ms.set_seed(0)
        model = PanGuPiForCausalLM(dataclasses.replace(cfg, siaf=siaf, aug_shortcut=aug,
                                                       seq_length=max(cfg.seq_length, new_tokens + 16)))
        step = nn.TrainOneStepCell(PanGuPiWithLoss(model), nn.AdamWeightDecay(model.trainable_params(), 1e-4))
        generator = Generator(model)
        runs[name] = {
            "forward_s": lambda model=model: model(forward_ids).asnumpy(),
            "train_step_s": lambda step=step: step(ids).asnumpy(),
            "decode_ms_per_token": lambda g=generator: g.generate(prompts, SamplingConfig(max_new_tokens=new_tokens)),
        }
        for fn in runs[name].values():
            fn()  # compile
    times = {name: {key: [] for key in fns} for name, fns in runs.items()}
    names = list(runs)
    for round_ in range(repeats):
        # the order rotates from round to round: with a fixed order the first variant's forward was ~20%
        # slower in every round, a position effect that rotation spreads over all variants
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            fns = runs[name]
            for key, fn in fns.items():
                start = time.perf_counter()
                fn()
                seconds = time.perf_counter() - start
                times[name][key].append(1e3 * seconds / new_tokens if key == "decode_ms_per_token" else seconds)
    rows = {name: {key: statistics.median(values) for key, values in measured.items()}
            for name, measured in times.items()}
    for name, row in rows.items():
        for key, label in (("forward_s", "forward"), ("train_step_s", "train_step"), ("decode_ms_per_token", "decode")):
            row[f"{label}_overhead_pct"], row[f"{label}_overhead_iqr_pct"] = paired_overhead(
                times[name][key], times["llama"][key])
    return rows


def paired_overhead(variant, base) -> tuple[float, list[float]]:
    """Overhead in % of `variant` over `base`, timed in the same rounds: the median of the per-round
    ratios, and their quartiles."""
    ratios = np.asarray(variant, np.float64) / np.asarray(base, np.float64)
    low, mid, high = (float(100 * (q - 1)) for q in np.percentile(ratios, [25, 50, 75]))
    return mid, [low, high]


def _pro_forward_seconds(cfg: ModelConfig, seq: int, repeats: int) -> float:
    """Median forward seconds (batch 1, `seq` tokens) of a fresh model of `cfg`, in this process."""
    from mindspore import Tensor

    from pangu_pro.model import PanGuPiForCausalLM
    from pangu_pro.runtime import init_mindspore

    init_mindspore(seed=0)
    ids = Tensor(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, seq)).astype(np.int32))
    model = PanGuPiForCausalLM(cfg)
    model.set_train(False)
    return timed(lambda: model(ids).asnumpy(), repeats)[1]


def pro_forward_overhead(cfg: ModelConfig, seq: int, repeats: int) -> dict:
    """Forward time (batch 1, `seq` tokens) of the 1B Pro shape per module variant. Each variant runs in
    a process of its own (a compiled ~4 GB model is not freed within a process: two in one process ran
    out of 24 GB), in the order A B C D D C B A so that a steady drift hits every variant alike; the
    time of a variant is the mean of its two runs."""
    import multiprocessing

    seconds = {name: [] for name in VARIANTS}
    context = multiprocessing.get_context("spawn")
    for name in list(VARIANTS) + list(reversed(VARIANTS)):
        siaf, aug = VARIANTS[name]
        with context.Pool(1) as pool:
            variant = dataclasses.replace(cfg, siaf=siaf, aug_shortcut=aug)
            seconds[name].append(pool.apply(_pro_forward_seconds, (variant, seq, repeats)))
    rows = {name: {"forward_s": statistics.mean(runs), "runs_s": runs} for name, runs in seconds.items()}
    for row in rows.values():
        row["forward_overhead_pct"] = 100 * (row["forward_s"] / rows["llama"]["forward_s"] - 1)
    return rows


def render_markdown(results: dict) -> str:
    lines = ["# Model benchmark", "", f"Machine: {results['machine']}. Median of {results['repeats']} calls after compilation.", "",
             "| config | parameters | batch × seq | forward | train step | train tokens/s |", "|---|---|---|---|---|---|"]
    for name, row in results["speed"].items():
        lines.append(f"| {name} | {row['parameters'] / 1e6:.1f}M | {row['batch']} × {row['seq']} | "
                     f"{row['forward_s'] * 1e3:.0f} ms | {row['train_step_s'] * 1e3:.0f} ms | {row['train_tokens_per_s']:.0f} |")
    lines += ["", f"PanGu-pi module overhead on the medium config, the four variants timed in alternation, "
              f"{results['overhead_rounds']} "
              "rounds; overhead = median over rounds of the variant's time / LLaMA's in the same round, with the "
              "quartiles (paper, V100 decode: SIAF +2.6%, AugShortcut +1.3%):", "",
              "| variant | forward | overhead | train step | overhead | decode ms/token | overhead |",
              "|---|---|---|---|---|---|---|"]

    def pct(row, label):
        low, high = row[f"{label}_overhead_iqr_pct"]
        return f"{row[f'{label}_overhead_pct']:+.1f}% ({low:+.0f}..{high:+.0f})"

    for name, row in results["overhead"].items():
        lines.append(f"| {name} | {row['forward_s'] * 1e3:.1f} ms | {pct(row, 'forward')} | "
                     f"{row['train_step_s'] * 1e3:.0f} ms | {pct(row, 'train_step')} | "
                     f"{row['decode_ms_per_token']:.2f} | {pct(row, 'decode')} |")
    if results.get("pro_overhead"):
        separate = " Timed in a run of its own, after the rows above." if results["pro_separate_run"] else ""
        lines += ["", f"1B Pro shape, forward of batch 1 × {results['pro_seq']} tokens (each variant twice, in a "
                  f"process of its own, order A B C D D C B A; mean of the two).{separate}", "",
                  "| variant | forward | overhead |", "|---|---|---|"]
        for name, row in results["pro_overhead"].items():
            lines.append(f"| {name} | {row['forward_s']:.2f} s | {row['forward_overhead_pct']:+.1f}% |")
    d = results["decoding"]
    lines += ["", f"Decoding {d['new_tokens']} tokens, batch {d['batch']}, medium config: KV cache "
              f"{d['cached_ms_per_token']:.2f} ms/token ({d['cached_tokens_per_s']:.0f} tokens/s) vs full padded recompute "
              f"{d['uncached_ms_per_token']:.2f} ms/token ({d['uncached_tokens_per_s']:.0f} tokens/s): {d['speedup']:.1f}× faster.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pangu_pro.runtime import adapt_to_device, init_mindspore

    init_mindspore()
    out = Path(args.out)
    if args.pro_only:
        if not out.with_suffix(".json").is_file():
            raise SystemExit(f"bench model --pro-only: no results at {out.with_suffix('.json')} to add the 1B Pro "
                             "rows to; run `pangu-pro bench model` first")
        results = read_json(out.with_suffix(".json"))
        time_pro(results, args, separate=True)
        return write_results(results, out)
    small = adapt_to_device(load_config(args.config).model)
    medium = dataclasses.replace(MEDIUM, seq_length=max(args.seq, MEDIUM.seq_length))
    results = {"machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
               "repeats": args.repeats, "seq": args.seq, "speed": {}, "overhead": {}, "decoding": {}}
    for name, cfg in (("tiny_cpu", small), ("medium_23m", medium)):
        print(f"[bench model] forward and train step: {name}", flush=True)
        results["speed"][name] = time_forward_and_step(cfg, args.batch, args.seq, args.repeats)
    print("[bench model] SIAF / AugShortcut overhead", flush=True)
    results["overhead_rounds"] = args.overhead_rounds
    results["overhead"] = module_overhead(medium, args.batch, args.seq, args.overhead_rounds, 64)
    if not args.skip_pro:
        time_pro(results, args, separate=False)
    print("[bench model] cached vs uncached decoding", flush=True)
    results["decoding"] = time_decoding(medium, 1, args.decode_tokens)
    return write_results(results, out)


def time_pro(results: dict, args: argparse.Namespace, separate: bool) -> None:
    from pangu_pro.runtime import adapt_to_device

    print("[bench model] 1B Pro shape: forward per PanGu-pi module", flush=True)
    pro = adapt_to_device(load_config(args.pro_config).model)
    results["pro_overhead"] = pro_forward_overhead(dataclasses.replace(pro, seq_length=max(args.seq, 16)),
                                                   args.seq, min(args.repeats, 2))
    results["pro_seq"], results["pro_separate_run"] = args.seq, separate


def write_results(results: dict, out: Path) -> int:
    atomic_write_json(out.with_suffix(".json"), results)
    atomic_write_text(out.with_suffix(".md"), render_markdown(results))
    print(render_markdown(results))
    print(f"written {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0
