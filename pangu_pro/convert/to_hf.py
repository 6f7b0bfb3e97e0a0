"""pangu-pro checkpoint -> Hugging Face folder (`pangu-pro convert to-hf`).

The folder holds `config.json`, `generation_config.json`, the weights as safetensors (one
`model.safetensors`, or shards `model-0000k-of-0000n.safetensors` with `model.safetensors.index.json`
past `max_shard_size`), with a tokenizer the tokenizer files, and `pangu_pro_export.json` (what made
it: `export_record`). With both PanGu-pi modules off the model is a plain `LlamaForCausalLM`; otherwise
`configuration_pangu_pi.py` and `modeling_pangu_pi.py` are copied in and named in `auto_map` (load
with `trust_remote_code=True`).

Tensors are streamed: each is read from the checkpoint, renamed, cast and written before the next one.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from pangu_pro.progress import progress_bar

from pangu_pro.config import ModelConfig
from pangu_pro.convert.checkpoints import open_checkpoint
from pangu_pro.convert.names import STORAGE_CODES, TORCH_DTYPES, expected_shapes, hf_config, is_pangu, to_hf_name
from pangu_pro.convert.safetensors_stream import ITEM_SIZES, cast_for_storage, write_safetensors
from pangu_pro.io import WEIGHTS_NAME, atomic_write_json, atomic_write_text
from pangu_pro.tokens import checkpoint_convention_problem

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
EXPORT_RECORD = "pangu_pro_export.json"  # what made the export (`export_record`)
MODELING_DIR = Path(__file__).parent / "hf_modeling"
MODELING_FILES = ("configuration_pangu_pi.py", "modeling_pangu_pi.py")
STALE = re.compile(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json|\.sha256)?")  # with digests (pangu_pro.digests)
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """'5GB', '200MB', '64KiB' or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in SIZE_UNITS:
        raise ValueError(f"max shard size {text!r}: expected a size such as 5GB, 200MB or 4096")
    size = int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])
    if size <= 0:
        raise ValueError(f"max shard size {text!r} must be positive")
    return size


def check_checkpoint(source, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The expected tensors of `cfg`; raises naming the first missing, unexpected or mis-shaped tensor."""
    expected = expected_shapes(cfg)
    present = set(source.keys())
    missing = [name for name in expected if name not in present]
    if missing:
        raise ValueError(f"{source.path}: missing tensor {missing[0]} ({len(missing)} missing in all) for the "
                         "model config given")
    unexpected = sorted(present - set(expected))
    if unexpected:
        raise ValueError(f"{source.path}: unexpected tensor {unexpected[0]} ({len(unexpected)} in all); does the "
                         "config (siaf, aug_shortcut, tie_word_embeddings) match the checkpoint?")
    for name, shape in expected.items():
        if tuple(source.shape(name)) != shape:
            raise ValueError(f"{source.path}: tensor {name} has shape {tuple(source.shape(name))}, the model "
                             f"config expects {shape}")
    return expected


def plan_shards(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Split names (in order) into shards of at most `limit` bytes; a larger tensor gets a shard of its own."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"{out_dir}: folder is not empty; pass --overwrite to replace an earlier export")
        for path in out_dir.iterdir():  # old shards would mix with the new ones
            if path.is_file() and STALE.fullmatch(path.name):
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def export_to_hf(checkpoint: str | Path, cfg: ModelConfig, out_dir: str | Path, tokenizer: str | Path | None = None,
                 dtype: str = "float32", max_shard_size: str | int = "5GB", overwrite: bool = False,
                 progress: bool = True, config_source: str = "the model config") -> dict:
    """Write a Hugging Face folder for `checkpoint` (weights file, checkpoint folder or distributed run).
    A tokenizer that does not fit `cfg` (from `config_source`) or the checkpoint is refused before
    anything is written (`tokenizer.hf.check_against_model`)."""
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(TORCH_DTYPES)}")
    dtype = TORCH_DTYPES[dtype]
    code = STORAGE_CODES[dtype]
    limit = parse_size(max_shard_size)
    cfg.validate()
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise FileNotFoundError(f"{tokenizer}: tokenizer model not found")
    source = open_checkpoint(checkpoint)
    expected = check_checkpoint(source, cfg)
    problem = checkpoint_convention_problem(checkpoint)
    if problem:  # the export's tokenizer puts <s> first, which this model never saw
        print(f"warning: {problem}", file=sys.stderr)
    tokenizer_values = None
    if tokenizer is not None:
        tokenizer_values = tokenizer_checks(checkpoint, cfg, config_source)
        check_tokenizer(tokenizer, tokenizer_values)
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)

    hf_names = {to_hf_name(name): name for name in expected}
    sizes = {hf: ITEM_SIZES[code] * math.prod(expected[ours]) for hf, ours in hf_names.items()}
    shards = plan_shards(sizes, limit)
    files = [HF_WEIGHTS] if len(shards) == 1 else [
        f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    bar = progress_bar(total=len(hf_names), desc="to-hf", unit="tensor", disable=not progress)
    for names, filename in zip(shards, files):
        write_safetensors(out_dir / filename, [(hf, expected[hf_names[hf]], code) for hf in names],
                          lambda hf: cast_for_storage(source.get(hf_names[hf]), code),
                          metadata={"format": "pt"}, on_tensor=lambda _: bar.update())
    bar.close()
    if len(shards) > 1:
        atomic_write_json(out_dir / HF_INDEX, {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": {hf: filename for names, filename in zip(shards, files) for hf in names},
        })

    config = hf_config(cfg, dtype)
    if is_pangu(cfg):
        for name in MODELING_FILES:
            atomic_write_text(out_dir / name, (MODELING_DIR / name).read_text(encoding="utf-8"))
    atomic_write_text(out_dir / "config.json", config.to_json_string(use_diff=False))
    from transformers import GenerationConfig

    generation = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                  pad_token_id=cfg.pad_token_id)
    atomic_write_text(out_dir / "generation_config.json", generation.to_json_string(use_diff=True))
    if tokenizer is not None:
        write_tokenizer(tokenizer, out_dir, tokenizer_values)
    atomic_write_json(out_dir / EXPORT_RECORD, export_record(checkpoint, source, tokenizer, dtype))
    return {"out_dir": str(out_dir), "files": files, "tensors": len(hf_names), "dtype": dtype,
            "architecture": config.architectures[0]}


def export_record(checkpoint: str | Path, source, tokenizer: str | Path | None, dtype: str) -> dict:
    """What made an export (`EXPORT_RECORD` in the folder): the checkpoint and the weights file read
    (`provenance.weights_record`; a merged distributed run has none), the tokenizer's SHA-256, the
    token convention its tokenizer files follow, and the storage dtype."""
    from pangu_pro.io import file_sha256
    from pangu_pro.provenance import weights_record
    from pangu_pro.tokens import TOKEN_CONVENTION

    weights = getattr(source, "path", None)
    return {"made_by": "pangu-pro convert to-hf", "checkpoint": str(Path(checkpoint).resolve()),
            "weights": weights_record(weights) if weights is not None else None,
            "tokenizer": None if tokenizer is None else {"path": str(Path(tokenizer).resolve()),
                                                         "sha256": file_sha256(tokenizer)},
            "token_convention": TOKEN_CONVENTION, "dtype": dtype}


def tokenizer_checks(checkpoint: str | Path, cfg: ModelConfig, config_source: str) -> dict:
    """What the tokenizer must match, as plain values: the config's size and special ids, and the
    tokenizer digest the checkpoint's weights file records (`tokenizer_sha256`, written by remap)."""
    values = {"vocab_size": cfg.vocab_size, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
              "pad_token_id": cfg.pad_token_id, "source": config_source}
    digest, weights = checkpoint_tokenizer_digest(checkpoint)
    if digest:
        values.update(sha256=digest, sha256_source=str(weights))
    return values


def checkpoint_tokenizer_digest(checkpoint: str | Path) -> tuple[str | None, Path | None]:
    """(tokenizer sha256 recorded in the weights file's metadata, that file); (None, None) if none."""
    from safetensors import safe_open

    path = Path(checkpoint)
    path = path / WEIGHTS_NAME if path.is_dir() else path
    if not path.is_file():
        return None, None
    with safe_open(str(path), framework="numpy") as handle:
        return (handle.metadata() or {}).get("tokenizer_sha256"), path


def check_tokenizer(spm_model: str | Path, values: dict) -> None:
    from pangu_pro.tokenizer.hf import check_against_model
    from pangu_pro.tokenizer.vocab import read_model_proto

    check_against_model(spm_model, read_model_proto(spm_model), **values)


def write_tokenizer(spm_model: str | Path, out_dir: Path, values: dict) -> None:
    """Hugging Face tokenizer files for a SentencePiece model (the tokenizer stage's writer)."""
    from pangu_pro.tokenizer.hf import write_hf_tokenizer

    write_hf_tokenizer(spm_model, out_dir, **values)

