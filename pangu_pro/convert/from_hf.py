"""Hugging Face folder -> pangu-pro checkpoint (`pangu-pro convert from-hf`).

Accepts `LlamaForCausalLM` folders (for instance a public LLaMA model to inherit from) and our own
PanGu-pi exports. Safe with untrusted folders: only `config.json`, the safetensors index and the
safetensors files are read. No code from the folder runs and nothing is unpickled; `.bin` / `.pt`
weights are refused with a note on re-saving them as safetensors.

Output: a checkpoint folder with `model.safetensors` (fp32, our parameter names), `config.yaml`
(the `model` section) and, when the folder has one, a copy of `tokenizer.model`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from pangu_pro.progress import progress_bar

from pangu_pro.configtools import brief, to_mapping
from pangu_pro.convert.names import expected_shapes, from_hf_name, model_config_from_hf, to_hf_name
from pangu_pro.convert.safetensors_stream import SafetensorsFile, write_safetensors
from pangu_pro.convert.to_hf import HF_INDEX, HF_WEIGHTS
from pangu_pro.io import atomic_path, atomic_write_text, read_json
from pangu_pro.model.weights import WEIGHTS_NAME

CONFIG_NAME = "config.yaml"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # a buffer some older exports saved; recomputed from rope_theta


def refuse_pickles(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    what = f"only pickle weights ({', '.join(pickles)})" if pickles else "no weights"
    advice = ("pangu-pro never unpickles files from a folder it converts, since unpickling can run code. "
              "Where you trust the files, re-save them as safetensors:\n"
              "  python -c \"from transformers import AutoModelForCausalLM; "
              f"AutoModelForCausalLM.from_pretrained('{folder}').save_pretrained('NEW_DIR', "
              "safe_serialization=True)\"\nthen convert NEW_DIR.") if pickles else \
        f"expected {HF_WEIGHTS} or {HF_INDEX}"
    raise ValueError(f"{folder}: {what}; {advice}")


def weight_files(folder: Path) -> dict[str, Path]:
    """Hugging Face tensor name -> the safetensors file holding it (checked against the file headers)."""
    index_path = folder / HF_INDEX
    if index_path.is_file():
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path}: not a safetensors index (no weight_map mapping)")
        for name, filename in weight_map.items():
            if not isinstance(filename, str) or Path(filename).name != filename or not filename.endswith(".safetensors"):
                raise ValueError(f"{index_path}: tensor {name}: file {brief(filename)} is not a safetensors file "
                                 "in this folder")
        handles = {}
        for filename in sorted(set(weight_map.values())):
            if not (folder / filename).is_file():
                raise FileNotFoundError(f"{index_path}: shard {filename} is missing")
            handles[filename] = SafetensorsFile(folder / filename)
        for name, filename in weight_map.items():
            if name not in handles[filename].entries:
                raise ValueError(f"{folder / filename}: tensor {name}, listed in {HF_INDEX}, is not in the file")
        return {name: handles[filename] for name, filename in weight_map.items()}
    if (folder / HF_WEIGHTS).is_file():
        handle = SafetensorsFile(folder / HF_WEIGHTS)
        return {name: handle for name in handle.keys()}
    refuse_pickles(folder)


def import_from_hf(folder: str | Path, out: str | Path, progress: bool = True) -> dict:
    """Convert the Hugging Face model folder `folder` into the checkpoint folder `out`."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json)")
    data = read_json(config_path)
    if not isinstance(data, dict):
        raise ValueError(f"{config_path}: expected a JSON object")
    cfg = model_config_from_hf(data, str(config_path))
    expected = expected_shapes(cfg)
    files = weight_files(folder)

    found: dict[str, tuple[str, SafetensorsFile]] = {}  # our name -> (HF name, file)
    for hf_name, handle in files.items():
        ours = from_hf_name(hf_name)
        if ours is None and hf_name.endswith(IGNORED_SUFFIXES):
            continue
        if ours == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: the head is the embedding
        if ours not in expected:
            raise ValueError(f"{handle.path}: unexpected tensor {hf_name} for the model in {config_path.name} "
                             f"({cfg.num_layers} layers, siaf={cfg.siaf}, aug_shortcut={cfg.aug_shortcut})")
        found[ours] = (hf_name, handle)
    missing = [name for name in expected if name not in found]
    if missing:
        hf_missing = [to_hf_name(name) for name in missing]
        raise ValueError(f"{folder}: missing tensor {hf_missing[0]} ({len(missing)} missing in all)")
    for ours, shape in expected.items():
        hf_name, handle = found[ours]
        if handle.shape(hf_name) != shape:
            raise ValueError(f"{handle.path}: tensor {hf_name} has shape {list(handle.shape(hf_name))}, "
                             f"{config_path.name} implies {list(shape)}")

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder (--out names a checkpoint folder)")
    bar = progress_bar(total=len(expected), desc="from-hf", unit="tensor", disable=not progress)
    write_safetensors(out / WEIGHTS_NAME, [(name, shape, "F32") for name, shape in expected.items()],
                      lambda name: found[name][1].get(found[name][0]),
                      metadata={"converted_from": str(folder), "format": "pangu-pro"},
                      on_tensor=lambda _: bar.update())
    bar.close()
    atomic_write_text(out / CONFIG_NAME, yaml.safe_dump({"model": to_mapping(cfg)}, sort_keys=False))
    tokenizer = folder / "tokenizer.model"
    if tokenizer.is_file():  # SentencePiece protobuf: data, not code
        with atomic_path(out / "tokenizer.model") as tmp:
            shutil.copyfile(tokenizer, tmp)
    return {"out": str(out), "weights": str(out / WEIGHTS_NAME), "config": str(out / CONFIG_NAME),
            "tensors": len(expected), "tokenizer": tokenizer.is_file()}

