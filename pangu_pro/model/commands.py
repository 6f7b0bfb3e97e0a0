"""CLI commands of the model stage: `params`, `generate` and `plan`."""
from __future__ import annotations

import argparse
import sys
import time

from pangu_pro.overrides import add_config_overrides
from pangu_pro.config import load_config
from pangu_pro.tokens import checkpoint_convention_problem, prompt_ids


def register(subparsers) -> None:
    p = subparsers.add_parser("params", help="analytic parameter count of a config, by component")
    p.add_argument("config", help="YAML config file")
    add_config_overrides(p)
    p.set_defaults(func=run_params)

    g = subparsers.add_parser("generate", help="generate text (or token ids) with a KV cache")
    g.add_argument("config", help="YAML config file")
    add_config_overrides(g)
    g.add_argument("--checkpoint", help="weights file or checkpoint folder (random weights if omitted)")
    g.add_argument("--tokenizer", help="SentencePiece .model (default: data.tokenizer of the config)")
    source = g.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="prompt text, fed as <s> text like a training "
                        "document's start (repeat for a batch)")
    source.add_argument("--prompt-ids", action="append", help="prompt as space-separated token ids, fed as given "
                        "(start with the BOS id, as training documents do; repeatable)")
    g.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: no limit)")
    g.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: the smallest set of tokens whose probability reaches p (1: off)")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampling (and of random weights)")
    g.add_argument("--no-eos-stop", action="store_true", help="do not stop at the end-of-sequence token")
    g.set_defaults(func=run_generate)


def run_params(args: argparse.Namespace) -> int:
    from pangu_pro.model.params import format_parameter_table

    config = load_config(args.config, args.overrides)
    print(format_parameter_table(config.model, args.config))
    return 0


def ignored_sampling_options(temperature: float, top_k: int, top_p: float) -> list[str]:
    """The sampling options that greedy decoding (temperature 0) would silently ignore."""
    if temperature != 0:
        return []
    return ([f"--top-k {top_k}"] if top_k else []) + ([f"--top-p {top_p:g}"] if top_p != 1.0 else [])


def run_generate(args: argparse.Namespace) -> int:
    from pangu_pro.model.generation import Generator, SamplingConfig
    from pangu_pro.model.weights import build_model
    from pangu_pro.provenance import check_tokenizer_for_checkpoint
    from pangu_pro.runtime import adapt_to_device, init_mindspore

    ignored = ignored_sampling_options(args.temperature, args.top_k, args.top_p)
    if ignored:
        raise ValueError(f"--temperature 0 decodes greedily, so {' and '.join(ignored)} would have no effect: "
                         "pass --temperature > 0 to sample with them, or leave them out")
    config = load_config(args.config, args.overrides)
    init_mindspore(seed=args.seed)
    model_cfg = adapt_to_device(config.model, announce=lambda m: print(m, file=sys.stderr))
    tokenizer = None
    if args.prompt:
        path = args.tokenizer or config.data.tokenizer
        if not path:
            raise ValueError("--prompt needs a tokenizer: pass --tokenizer or set data.tokenizer in the config")
        import sentencepiece as spm
        if args.checkpoint:
            check_tokenizer_for_checkpoint(path, args.checkpoint)
        tokenizer = spm.SentencePieceProcessor(model_file=path)
        prompts = [prompt_ids(tokenizer.encode(text), model_cfg.bos_token_id) for text in args.prompt]
    else:
        try:
            prompts = [[int(t) for t in ids.split()] for ids in args.prompt_ids]
        except ValueError:
            raise ValueError(f"--prompt-ids must be space-separated integers, got {args.prompt_ids}") from None
    if args.checkpoint is None:
        print("note: no --checkpoint given, generating with random weights", file=sys.stderr)
    else:
        problem = checkpoint_convention_problem(args.checkpoint)
        if problem:
            print(f"warning: {problem}", file=sys.stderr)
    model = build_model(model_cfg, args.checkpoint, seed=args.seed)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed,
                              eos_token_id=None if args.no_eos_stop else model_cfg.eos_token_id)
    start = time.perf_counter()
    outputs = Generator(model).generate(prompts, sampling)
    seconds = time.perf_counter() - start
    for prompt, out in zip(prompts, outputs):
        if tokenizer is not None:
            print(tokenizer.decode(prompt + out))
        else:
            print(" ".join(map(str, out)))
    total = sum(len(o) for o in outputs)
    print(f"{total} tokens in {seconds:.2f} s (compile included)", file=sys.stderr)
    return 0
