"""`pangu-pro tokenizer ...`: train, count, coverage, compress, remap-checkpoint, export-hf."""
from __future__ import annotations

import argparse
from pathlib import Path

from pangu_pro.overrides import add_config_overrides


def register(subparsers) -> None:
    """Add the `tokenizer` command and its sub-commands."""
    parser = subparsers.add_parser("tokenizer", help="train, count, measure and compress a SentencePiece tokenizer")
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("train", help="train the big SentencePiece tokenizer (byte fallback) on text files")
    p.add_argument("inputs", nargs="+", help="text files, one sentence or document line per line")
    p.add_argument("--out", required=True, help="output model path (.model; a .vocab is written beside it)")
    p.add_argument("--vocab-size", type=int, required=True, help="pieces in the model")
    p.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe", help="SentencePiece algorithm")
    p.add_argument("--character-coverage", type=float, default=0.9995,
                   help="share of the characters covered by pieces; the rest falls back to bytes")
    p.add_argument("--user-defined-symbols", nargs="*", default=[], metavar="SYMBOL",
                   help="pieces always kept whole (never split)")
    p.add_argument("--input-sentence-size", type=int, default=0, help="sample this many lines (0: all)")
    p.add_argument("--threads", type=int, default=None, help="default: all cores")
    p.add_argument("--seed", type=int, default=1234, help="seed of the sentence sampling")
    p.set_defaults(func=_train)

    p = sub.add_parser("count", help="token-id frequencies of MindRecord shards or raw text")
    p.add_argument("inputs", nargs="+", help="MindRecord shards (input_ids), preprocess output folders, or text files")
    p.add_argument("--tokenizer", required=True, help="the SentencePiece model the ids belong to")
    p.add_argument("--out", required=True, help="counts file (.npy); a .json sidecar is written beside it")
    p.add_argument("--format", choices=("auto", "mindrecord", "text"), default="auto",
                   help="auto: MindRecord when <file>.db exists, else text")
    p.add_argument("--workers", type=int, default=None,
                   help="MindRecord: counting processes (default: all cores when the shards total 256 MiB or more, "
                        "else this process alone); text: SentencePiece threads (default: all cores)")
    p.set_defaults(func=_count)

    p = sub.add_parser("coverage", help="coverage and embedding+head share by vocabulary size")
    p.add_argument("--tokenizer", required=True, help="the big SentencePiece model")
    p.add_argument("--counts", required=True, help="counts .npy written by `tokenizer count`")
    p.add_argument("--config", help="model config YAML, for the parameter share")
    p.add_argument("--sizes", type=int, nargs="*", help="vocab sizes (default: 16 steps up to the full size)")
    p.add_argument("--csv", help="write the table as CSV")
    p.add_argument("--png", help="write the figure as PNG (coverage and parameter share by vocabulary size)")
    p.add_argument("--chosen-size", type=int, default=None,
                   help="vocabulary size to mark on the figure (added to --sizes; default: the smallest size "
                        "with 90%% coverage)")
    add_config_overrides(p)
    p.set_defaults(func=_coverage)

    p = sub.add_parser("compress", help="write the compact tokenizer and its new2old id map")
    p.add_argument("--tokenizer", required=True, help="the big SentencePiece model")
    p.add_argument("--counts", required=True, help="counts .npy written by `tokenizer count`")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--vocab-size", type=int, help="pieces of the compact tokenizer")
    target.add_argument("--coverage", type=float, help="smallest vocabulary covering this fraction, in (0, 1]")
    p.add_argument("--out", required=True, help="output prefix: PREFIX.model, PREFIX.new2old.npy/.json")
    p.add_argument("--no-closure", action="store_true",
                   help="naive frequency cut without BPE merge closure (breaks segmentation; for comparison)")
    p.add_argument("--no-keep-bracketed", action="store_true",
                   help="let normal pieces shaped <...> or [...] compete by count (default: kept, as the "
                        "official script does)")
    p.set_defaults(func=_compress)

    p = sub.add_parser("remap-checkpoint", help="gather embedding and LM-head rows through new2old")
    p.add_argument("--checkpoint", required=True, help="safetensors file or checkpoint directory")
    p.add_argument("--config", required=True, help="config YAML of the checkpoint")
    p.add_argument("--map", required=True, help="new2old .npy (or its .json); its record names the source tokenizer")
    p.add_argument("--tokenizer", default=None, metavar="BIG.model",
                   help="the tokenizer the checkpoint was trained with (default: the one the weights record, "
                        "else the config's data.tokenizer); a map made from another one is refused")
    p.add_argument("--out-checkpoint", required=True, help=".safetensors file, or a directory")
    p.add_argument("--out-config", required=True, help="config YAML written with the new vocab_size")
    p.set_defaults(func=_remap)

    p = sub.add_parser("export-hf", help="write Hugging Face tokenizer files for a SentencePiece model",
                       description="Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and "
                                   "tokenizer.model (BPE models only). With --config the tokenizer is checked "
                                   "against the model (size, bos/eos ids) and pads with its pad_token_id.")
    p.add_argument("--tokenizer", required=True, help="SentencePiece .model")
    p.add_argument("--out-dir", required=True, help="folder for the Hugging Face tokenizer files")
    p.add_argument("--config", default=None, metavar="Y", help="model config the tokenizer must fit (recommended)")
    p.set_defaults(func=_export_hf)


def _train(args: argparse.Namespace) -> int:
    from pangu_pro.tokenizer.train import train_tokenizer

    path = train_tokenizer(args.inputs, args.out, args.vocab_size, args.model_type, args.character_coverage,
                           args.user_defined_symbols, args.threads, args.input_sentence_size, seed=args.seed)
    print(f"wrote {path} and {path.with_suffix('.vocab')}")
    return 0


def _count(args: argparse.Namespace) -> int:
    from pangu_pro.tokenizer.counting import count_mindrecord, count_text, is_mindrecord, save_counts
    from pangu_pro.tokenizer.vocab import read_model_proto

    from pangu_pro.data.dataset import resolve_files

    inputs = [shard for path in args.inputs
              for shard in (resolve_files(path) if Path(path).is_dir() else [path])]  # preprocess folders
    kinds = {is_mindrecord(p) for p in inputs} if args.format == "auto" else {args.format == "mindrecord"}
    if len(kinds) != 1:
        raise ValueError("inputs mix MindRecord shards and text files; count them separately")
    if kinds.pop():
        vocab_size = len(read_model_proto(args.tokenizer).pieces)
        counts, kind = count_mindrecord(inputs, vocab_size, args.workers), "mindrecord"
    else:
        counts, kind = count_text(inputs, args.tokenizer, args.workers), "text"
    info = save_counts(args.out, counts, args.tokenizer, inputs, kind)
    print(f"counted {info['total_tokens']:,} tokens ({info['distinct_tokens']:,} distinct ids) -> {args.out}")
    return 0


def _coverage(args: argparse.Namespace) -> int:
    from pangu_pro.config import load_config
    from pangu_pro.tokenizer.counting import load_counts
    from pangu_pro.tokenizer.coverage import coverage_table, default_sizes, format_table, write_csv, write_png
    from pangu_pro.tokenizer.vocab import read_vocab

    vocab = read_vocab(args.tokenizer)
    counts = load_counts(args.counts, tokenizer=args.tokenizer).counts
    if args.overrides and not args.config:
        raise ValueError("config overrides need --config")
    cost = vocab_cost(load_config(args.config, args.overrides).model) if args.config else None
    sizes = list(args.sizes or default_sizes(vocab)) + ([args.chosen_size] if args.chosen_size else [])
    rows = coverage_table(vocab, counts, sizes, cost)
    print(format_table(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.png:
        write_png(rows, args.png, args.chosen_size, f"Tokenizer coverage: {Path(args.tokenizer).name} on "
                  f"{Path(args.counts).name}")
        print(f"wrote {args.png}")
    return 0


def vocab_cost(model):
    """The model's parameter count split into per-vocabulary-piece and the rest (tokenizer.coverage.VocabCost)."""
    from pangu_pro.model.params import count_parameters
    from pangu_pro.tokenizer.coverage import VocabCost

    count = count_parameters(model)
    vocab_params = count.embedding + count.lm_head
    return VocabCost(params_per_piece=vocab_params // model.vocab_size, other_params=count.total - vocab_params)


def _compress(args: argparse.Namespace) -> int:
    from pangu_pro.tokenizer.compress import compress_tokenizer

    result = compress_tokenizer(args.tokenizer, args.counts, args.out, vocab_size=args.vocab_size,
                                coverage=args.coverage, closure=not args.no_closure,
                                keep_bracketed=not args.no_keep_bracketed)
    sel = result.selection
    print(f"kept {sel.new2old.size} pieces ({sel.required} required), coverage {100 * sel.coverage:.2f}%")
    print(f"wrote {result.model_path} and {result.map_path} (+ .json)")
    return 0


def _remap(args: argparse.Namespace) -> int:
    from pangu_pro.tokenizer.compress import load_new2old
    from pangu_pro.tokenizer.remap import remap_checkpoint

    config = remap_checkpoint(args.checkpoint, args.config, load_new2old(args.map), args.out_checkpoint,
                              args.out_config, map_path=args.map, tokenizer=args.tokenizer)
    print(f"vocab size {config.model.vocab_size}: wrote {args.out_checkpoint} and {args.out_config}")
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    from pangu_pro.tokenizer.hf import write_hf_tokenizer

    values = {}
    if args.config:
        from pangu_pro.config import load_config

        model = load_config(args.config).model
        values = {"vocab_size": model.vocab_size, "bos_token_id": model.bos_token_id,
                  "eos_token_id": model.eos_token_id, "pad_token_id": model.pad_token_id, "source": args.config}
    out = write_hf_tokenizer(args.tokenizer, args.out_dir, **values)
    print(f"wrote Hugging Face tokenizer files to {Path(out)}")
    return 0
