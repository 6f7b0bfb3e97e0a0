"""`pangu-pro bench decode`: greedy decoding, ours against Hugging Face `generate` on the same weights.

For each shape (the 23M LLaMA shape of `bench model`, and the same shape with both PanGu-pi modules)
one random model is built, saved, and exported through our own conversion (`convert to-hf`); the
exported folder is loaded with `transformers` (PyTorch, fp32, its default threads and dynamic KV cache).
Both arms decode the same prompts greedily for `--new-tokens` tokens, every token forced (no EOS), and
are timed alternately in this one process, `--repeats` times each: the machine's load affects both
alike, and the ratio is the result to trust. A decode time is the whole `generate` call (prefill
included) divided by the number of new tokens; the median over repeats is reported.

The memory-traffic bound is what one decode step must read — every weight matrix once (the embedding
table only for the LM head when tied) plus the KV cache of the average context — divided by the
copy bandwidth measured here (NumPy copy of 256 MiB, read + write bytes). Ours reads the whole
static cache (`cache_length` rows), so its own bound is given too.

The matmul floor separates the kernels from the rest: one graph holding only the weight matmuls of a
decode step (every layer's q, k, v, o, gate, up, down chained as in a layer, then the LM head; one
token per row), timed in MindSpore and, on the same weights, in PyTorch. Whatever our decode time has above MindSpore's floor is
element-wise work and per-kernel launch cost.

Last line: `speedup_vs_transformers: X.XXx` (batch 1, LLaMA shape; > 1 means we are faster).
Results: benchmarks/results/decode.json and decode.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pangu_pro.bench.model import MEDIUM, REPO, padded_recompute_ms
from pangu_pro.config import ModelConfig
from pangu_pro.io import atomic_write_json, atomic_write_text

SHAPES = {"llama": (False, False), "pangu": (True, True)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per arm, batch and shape")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--recompute-tokens", type=int, default=256,
                        help="tokens decoded by full padded recompute (batch 1, LLaMA) for the cache speedup; 0 skips")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "decode"),
                        help="output path without extension (.json and .md are written)")


def copy_bandwidth(size: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes/s moved by a large NumPy copy, reads plus writes, best of `repeats`."""
    src = np.ones(size, np.uint8)
    dst = np.empty_like(src)
    best = min(_seconds(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * size / best


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_bytes(cfg: ModelConfig, batch: int, context: float) -> dict:
    """Bytes one decode step reads: weights (the embedding only as a tied LM head) and the KV cache."""
    from pangu_pro.model.params import count_parameters

    count = count_parameters(cfg)
    weights = count.total - (0 if cfg.tie_word_embeddings else count.embedding)
    cache = 2 * cfg.num_layers * batch * cfg.kv_heads * cfg.head_dim * context
    return {"weights": 4 * weights, "cache": 4 * cache}


def matmul_floor_ms(cfg: ModelConfig, batch: int, blocks: int = 5, calls: int = 10) -> dict:
    """ms per decode step spent in the weight matmuls of attention, FFN and LM head alone, chained as
    a LLaMA layer chains them (q + k + v -> o, gate * up -> down, residuals), MindSpore (one graph)
    and PyTorch on the same weights. Needs kv_heads == num_heads (the 23M shape), so q, k, v add up."""
    import torch
    from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

    if cfg.kv_heads != cfg.num_heads:
        raise ValueError("the matmul floor chains q + k + v, so it needs kv_heads == num_heads")
    d, f = cfg.hidden_size, cfg.intermediate_size
    rng = np.random.default_rng(0)
    shapes = [(d, d)] * 4 + [(f, d), (f, d), (d, f)]
    layers = [[(0.02 * rng.standard_normal(shape)).astype(np.float32) for shape in shapes]
              for _ in range(cfg.num_layers)]
    head = (0.02 * rng.standard_normal((cfg.vocab_size, d))).astype(np.float32)
    x = rng.standard_normal((batch, d)).astype(np.float32)

    class Matmuls(nn.Cell):
        def __init__(self):
            super().__init__()
            self.weights = ParameterTuple([Parameter(Tensor(w), name=f"w{i}_{j}")
                                           for i, layer in enumerate(layers) for j, w in enumerate(layer)])
            self.head = Parameter(Tensor(head), name="head")
            self.matmul = ops.MatMul(transpose_b=True)

        def construct(self, x):
            for i in range(len(self.weights) // 7):
                q, k, v, o, gate, up, down = self.weights[7 * i:7 * i + 7]
                x = x + self.matmul(self.matmul(x, q) + self.matmul(x, k) + self.matmul(x, v), o)
                x = x + self.matmul(self.matmul(x, gate) * self.matmul(x, up), down)
            return self.matmul(x, self.head)

    def torch_chain(x):
        for q, k, v, o, gate, up, down in torch_layers:
            x = x + (x @ q.T + x @ k.T + x @ v.T) @ o.T
            x = x + ((x @ gate.T) * (x @ up.T)) @ down.T
        return x @ torch_head.T

    cell, inputs = Matmuls(), Tensor(x)
    torch_layers = [[torch.from_numpy(w) for w in layer] for layer in layers]
    torch_head, torch_x = torch.from_numpy(head), torch.from_numpy(x)
    expected = cell(inputs).asnumpy()
    with torch.inference_mode():
        np.testing.assert_allclose(torch_chain(torch_x).numpy(), expected, rtol=1e-3, atol=1e-3)

    def theirs():
        with torch.inference_mode():
            torch_chain(torch_x)

    # blocks of back-to-back calls, alternated: each framework's idle threads spin for a while after a
    # call, which would slow the other one if single calls alternated
    times = {"mindspore": [], "torch": []}
    for _ in range(blocks):
        for name, fn in (("mindspore", lambda: cell(inputs).asnumpy()), ("torch", theirs)):
            times[name].append(1e3 * _seconds(lambda: [fn() for _ in range(calls)]) / calls)
    return {name: statistics.median(runs) for name, runs in times.items()} | {"matmuls": 7 * cfg.num_layers + 1}


class OursArm:
    """Our `Generator` on a model, both graphs compiled by a warm-up generation."""

    def __init__(self, model, cache_length: int):
        from pangu_pro.model.generation import Generator

        self.generator = Generator(model, max_length=cache_length)
        self.model = model

    def __call__(self, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
        from pangu_pro.model.generation import SamplingConfig

        return np.array(self.generator.generate(prompts.tolist(), SamplingConfig(max_new_tokens=new_tokens)))


class TransformersArm:
    """Hugging Face `generate` (greedy, dynamic cache) on the folder our conversion wrote."""

    def __init__(self, folder: Path, trust_remote_code: bool):
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), trust_remote_code=trust_remote_code, dtype=torch.float32).eval()

    def __call__(self, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
        torch = self.torch
        ids = torch.tensor(prompts, dtype=torch.long)
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        return out[:, prompts.shape[1]:].numpy()


def build_arms(cfg: ModelConfig, folder: Path, cache_length: int, seed: int = 0):
    """A random model of `cfg` whose PanGu-pi modules are active (nonzero extra SIAF terms and shortcut
    W_up), exported with our HF conversion; returns (ours, transformers)."""
    from mindspore import Tensor

    from pangu_pro.convert.to_hf import export_to_hf
    from pangu_pro.model.weights import build_model, save_weights

    model = build_model(cfg, seed=seed)
    model.set_train(False)
    rng = np.random.default_rng(seed)
    for param in model.trainable_params():
        if param.name.endswith(("siaf.scale", "siaf.bias", "aug_shortcut.up.weight")):
            value = param.asnumpy()
            param.set_data(Tensor((value + rng.normal(0, 0.02, value.shape)).astype(np.float32)))
    weights = folder / "model.safetensors"
    save_weights(model, weights)
    export_to_hf(weights, cfg, folder / "hf", progress=False)
    return OursArm(model, cache_length), TransformersArm(folder / "hf", trust_remote_code=cfg.siaf or cfg.aug_shortcut)


def bench_shape(name: str, args: argparse.Namespace, bandwidth: float, log=print) -> dict:
    siaf, aug = SHAPES[name]
    cache_length = args.prompt + args.new_tokens
    cfg = dataclasses.replace(MEDIUM, siaf=siaf, aug_shortcut=aug, seq_length=max(MEDIUM.seq_length, cache_length))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = build_arms(cfg, Path(tmp), cache_length)
        rng = np.random.default_rng(1)
        for batch in args.batches:
            prompts = rng.integers(3, cfg.vocab_size, (batch, args.prompt))
            ours(prompts, 2)  # compile prefill and decode graphs
            theirs(prompts, 2)
            times = {"ours": [], "transformers": []}
            outputs = {}
            for _ in range(args.repeats):
                for arm_name, arm in (("ours", ours), ("transformers", theirs)):
                    start = time.perf_counter()
                    outputs[arm_name] = arm(prompts, args.new_tokens)
                    times[arm_name].append(1e3 * (time.perf_counter() - start) / args.new_tokens)
            live = step_bytes(cfg, batch, args.prompt + args.new_tokens / 2)
            static = step_bytes(cfg, batch, cache_length)
            row = {"batch": batch, "prompt": args.prompt, "new_tokens": args.new_tokens}
            for arm_name, runs in times.items():
                ms_token = statistics.median(runs)
                row[arm_name] = {"ms_per_token": ms_token, "tokens_per_s": 1e3 * batch / ms_token,
                                 "runs_ms_per_token": runs}
            row["speedup_vs_transformers"] = row["transformers"]["ms_per_token"] / row["ours"]["ms_per_token"]
            row["bytes_per_step"] = live
            row["bound_ms_per_token"] = 1e3 * (live["weights"] + live["cache"]) / bandwidth
            row["ours_bound_ms_per_token"] = 1e3 * (static["weights"] + static["cache"]) / bandwidth
            # same weights, two implementations: the greedy tokens agree until fp32 rounding flips a near-tie
            same = outputs["ours"] == outputs["transformers"]
            row["tokens_equal_fraction"] = float(same.mean())
            log(f"[bench decode] {name} batch {batch}: ours {row['ours']['ms_per_token']:.2f} ms/token, "
                f"transformers {row['transformers']['ms_per_token']:.2f} ms/token "
                f"({row['speedup_vs_transformers']:.2f}x), bound {row['bound_ms_per_token']:.2f} ms/token, "
                f"tokens equal {row['tokens_equal_fraction']:.1%}")
            rows[f"batch{batch}"] = row
            row["matmul_floor_ms"] = matmul_floor_ms(cfg, batch)
            log(f"[bench decode] {name} batch {batch}: matmuls alone {row['matmul_floor_ms']['mindspore']:.2f} ms "
                f"in MindSpore, {row['matmul_floor_ms']['torch']:.2f} ms in PyTorch")
        result = {"config": {"hidden": cfg.hidden_size, "layers": cfg.num_layers, "ffn": cfg.intermediate_size,
                             "vocab": cfg.vocab_size, "heads": cfg.num_heads, "siaf": siaf, "aug_shortcut": aug,
                             "cache_length": cache_length}, "rows": rows}
        if name == "llama" and args.recompute_tokens > 0:
            prompt = rng.integers(3, cfg.vocab_size, (1, args.prompt))
            recompute = padded_recompute_ms(ours.model, prompt, args.recompute_tokens)
            cached = rows["batch1"]["ours"]["ms_per_token"] if "batch1" in rows else float("nan")
            result["padded_recompute"] = {"batch": 1, "window": args.prompt + args.recompute_tokens,
                                          "ms_per_token": recompute, "cached_ms_per_token": cached,
                                          "cache_speedup": recompute / cached}
            log(f"[bench decode] padded recompute (window {args.prompt + args.recompute_tokens}): "
                f"{recompute:.2f} ms/token, cache {recompute / cached:.1f}x faster")
    return result


def render_markdown(results: dict) -> str:
    s = results["setting"]
    lines = ["# Decode benchmark: ours vs transformers `generate`", "",
             f"Machine: {results['machine']}; copy bandwidth {results['copy_bandwidth_gb_s']:.1f} GB/s. "
             f"Greedy, prompt {s['prompt']}, {s['new_tokens']} new tokens, fp32; median of {s['repeats']} "
             "alternated runs per arm (prefill included). Bound = bytes read per step (weights + KV cache of "
             "the average context) / copy bandwidth.", "",
             "| shape | batch | ours ms/token | transformers ms/token | speedup | ours tokens/s | "
             "transformers tokens/s | bound ms/token | matmuls alone, MindSpore / PyTorch ms | tokens equal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, shape in results["shapes"].items():
        for row in shape["rows"].values():
            floor = row["matmul_floor_ms"]
            lines.append(f"| {name} | {row['batch']} | {row['ours']['ms_per_token']:.2f} | "
                         f"{row['transformers']['ms_per_token']:.2f} | {row['speedup_vs_transformers']:.2f}x | "
                         f"{row['ours']['tokens_per_s']:.0f} | {row['transformers']['tokens_per_s']:.0f} | "
                         f"{row['bound_ms_per_token']:.2f} | {floor['mindspore']:.2f} / {floor['torch']:.2f} | "
                         f"{row['tokens_equal_fraction']:.0%} |")
    recompute = results["shapes"].get("llama", {}).get("padded_recompute")
    if recompute:
        lines += ["", f"Padded recompute (batch 1, LLaMA, window {recompute['window']}): "
                  f"{recompute['ms_per_token']:.2f} ms/token; the KV cache is {recompute['cache_speedup']:.1f}x faster."]
    lines += ["", f"Command: `{results['command']}` ({results['runtime_s']:.0f} s).", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pangu_pro.runtime import init_mindspore

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    init_mindspore()
    start = time.perf_counter()
    bandwidth = copy_bandwidth()
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "copy_bandwidth_gb_s": bandwidth / 1e9,
               "setting": {"prompt": args.prompt, "new_tokens": args.new_tokens, "repeats": args.repeats,
                           "batches": args.batches},
               "shapes": {name: bench_shape(name, args, bandwidth) for name in args.shapes}}
    results["runtime_s"] = time.perf_counter() - start
    results["command"] = "pangu-pro bench decode " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k != "out")
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), results)
    atomic_write_text(out.with_suffix(".md"), render_markdown(results))
    print(render_markdown(results))
    print(f"written {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    llama = results["shapes"].get("llama", {}).get("rows", {}).get("batch1")
    if llama:
        print(f"speedup_vs_transformers: {llama['speedup_vs_transformers']:.2f}x")
    return 0
