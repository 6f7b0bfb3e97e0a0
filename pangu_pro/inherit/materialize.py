"""From scores and mask values to a student checkpoint.

1. `select_units`: deterministic top-k per layer, so every student layer has exactly the target
   number of heads (whole key/value groups), FFN neurons and AugShortcut bottleneck units; the hidden channels are one top-k shared
   by every layer, the embedding and the head; the layers come from the layer selection.
2. `fold_values`: the kept units' mask values are multiplied into the weights that write them
   (head -> its columns of wo, neuron -> its column of w2, bottleneck unit -> its column of the
   AugShortcut's up projection, hidden channel -> the embedding column and
   the rows of wo, w2 and the AugShortcut's up projection, layer gate -> that layer's residual writers).
3. `slice_tensors`: the kept rows and columns become the student's weights (SIAF follows the neurons,
   the AugShortcut follows the hidden channels and its kept bottleneck units, the vocabulary `new2old`).

A teacher run with the folded weights and the binary masks of the selection computes the same logits
as the student (tests/test_inherit_materialize.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from pangu_pro.config import ModelConfig
from pangu_pro.inherit.hardconcrete import UnitArrays, bottleneck_width, select_layers, top_k
from pangu_pro.inherit.plan import StudentPlan

EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"
FINAL_NORM = "model.norm.weight"


@dataclass
class Selection:
    """Which teacher units the student keeps (all index arrays sorted increasingly)."""

    layers: np.ndarray  # [L_s] teacher layer ids
    groups: np.ndarray  # [L_s, KV_s] key/value groups kept in each student layer
    neurons: np.ndarray  # [L_s, F_s]
    hidden: np.ndarray  # [d_s]
    bottleneck: np.ndarray  # [L_s, B_s] AugShortcut bottleneck units ([L_s, 0] without AugShortcut)
    new2old: Optional[np.ndarray] = None  # [V_s] or None

    def binary_masks(self, teacher: ModelConfig) -> UnitArrays:
        """0/1 masks over the teacher's units (groups [L, KV]), zero in dropped layers."""
        masks = UnitArrays.full(teacher, 0.0)
        masks.layers[self.layers] = 1.0
        for row, layer in enumerate(self.layers):
            masks.heads[layer, self.groups[row]] = 1.0
            masks.neurons[layer, self.neurons[row]] = 1.0
            masks.bottleneck[layer, self.bottleneck[row]] = 1.0
        masks.hidden[self.hidden] = 1.0
        return masks

    def as_json(self) -> dict:
        return {"layers": self.layers.tolist(), "groups": self.groups.tolist(),
                "neurons_per_layer": int(self.neurons.shape[1]), "hidden": int(self.hidden.size),
                "bottleneck": self.bottleneck.tolist(),
                "vocab": None if self.new2old is None else int(self.new2old.size)}


def head_mask_from_groups(groups_mask: np.ndarray, group_size: int) -> np.ndarray:
    """[L, KV] group values -> [L, H] head values (head h belongs to group h // group_size)."""
    return np.repeat(np.asarray(groups_mask), group_size, axis=-1)


def select_units(plan: StudentPlan, scores: UnitArrays, layers: Optional[np.ndarray] = None) -> Selection:
    """Top-k of `scores` per layer; `layers` (teacher ids) default to `select_layers(scores.layers)`."""
    s = plan.student
    if layers is None:
        layers = select_layers(scores.layers, s.num_layers)
    layers = np.asarray(layers, dtype=np.int64)
    if layers.size != s.num_layers:
        raise ValueError(f"layer selection keeps {layers.size} layers, the student has {s.num_layers}")
    return Selection(layers=layers,
                     groups=top_k(np.asarray(scores.heads)[layers], s.kv_heads),
                     neurons=top_k(np.asarray(scores.neurons)[layers], s.intermediate_size),
                     hidden=top_k(scores.hidden, s.hidden_size),
                     bottleneck=top_k(np.asarray(scores.bottleneck)[layers], bottleneck_width(s)),
                     new2old=plan.new2old)


def _layer(i: int, name: str) -> str:
    return f"model.layers.{i}.{name}"


def fold_values(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, values: UnitArrays) -> dict[str, np.ndarray]:
    """Multiply mask values (teacher shapes, groups [L, KV]) into the weights that write the masked outputs."""
    out = {k: np.array(v, dtype=np.float32, copy=True) for k, v in tensors.items()}
    hidden = np.asarray(values.hidden, dtype=np.float64)
    out[EMBED] = (out[EMBED] * hidden[None, :]).astype(np.float32)
    groups = cfg.num_heads // cfg.kv_heads
    head_cols = np.repeat(head_mask_from_groups(values.heads, groups), cfg.head_dim, axis=-1)  # [L, H*hd]
    for i in range(cfg.num_layers):
        rows = hidden * float(values.layers[i])  # what this layer writes to each hidden channel
        wo = _layer(i, "attention.wo.weight")
        out[wo] = (out[wo] * rows[:, None] * head_cols[i][None, :]).astype(np.float32)
        w2 = _layer(i, "feed_forward.w2.weight")
        out[w2] = (out[w2] * rows[:, None] * np.asarray(values.neurons[i])[None, :]).astype(np.float32)
        up = _layer(i, "aug_shortcut.up.weight")
        if up in out:
            out[up] = (out[up] * rows[:, None] * np.asarray(values.bottleneck[i])[None, :]).astype(np.float32)
    return out


def slice_tensors(tensors: Mapping[str, np.ndarray], plan: StudentPlan, sel: Selection) -> dict[str, np.ndarray]:
    """The student's weights: the kept rows and columns of the teacher's (already folded) weights."""
    t = plan.teacher
    hd, g = t.head_dim, plan.groups
    hidden = sel.hidden
    vocab = sel.new2old if sel.new2old is not None else np.arange(t.vocab_size)
    out: dict[str, np.ndarray] = {}

    def take(name, rows=None, cols=None):
        w = np.asarray(tensors[name])
        if rows is not None:
            w = w[rows]
        if cols is not None:
            w = w[:, cols]
        return np.ascontiguousarray(w, dtype=np.float32)

    out[EMBED] = take(EMBED, vocab, hidden)
    if HEAD in tensors:
        out[HEAD] = take(HEAD, vocab, hidden)
    out[FINAL_NORM] = take(FINAL_NORM, hidden)
    for new, old in enumerate(sel.layers):
        kept_groups = sel.groups[new]
        heads = (kept_groups[:, None] * g + np.arange(g)[None, :]).reshape(-1)
        q_rows = (heads[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
        kv_rows = (kept_groups[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
        neurons = sel.neurons[new]

        def name(suffix, layer=old):
            return _layer(layer, suffix)

        def put(suffix, value):
            out[_layer(new, suffix)] = value

        put("attention_norm.weight", take(name("attention_norm.weight"), hidden))
        put("ffn_norm.weight", take(name("ffn_norm.weight"), hidden))
        put("attention.wq.weight", take(name("attention.wq.weight"), q_rows, hidden))
        put("attention.wk.weight", take(name("attention.wk.weight"), kv_rows, hidden))
        put("attention.wv.weight", take(name("attention.wv.weight"), kv_rows, hidden))
        put("attention.wo.weight", take(name("attention.wo.weight"), hidden, q_rows))
        put("feed_forward.w1.weight", take(name("feed_forward.w1.weight"), neurons, hidden))
        put("feed_forward.w3.weight", take(name("feed_forward.w3.weight"), neurons, hidden))
        put("feed_forward.w2.weight", take(name("feed_forward.w2.weight"), hidden, neurons))
        if t.siaf:
            put("feed_forward.siaf.scale", take(name("feed_forward.siaf.scale"), None, neurons))
            put("feed_forward.siaf.bias", take(name("feed_forward.siaf.bias"), None, neurons))
        if t.aug_shortcut:
            units = sel.bottleneck[new]
            put("aug_shortcut.down.weight", take(name("aug_shortcut.down.weight"), units, hidden))
            put("aug_shortcut.up.weight", take(name("aug_shortcut.up.weight"), hidden, units))
    return out


def materialize(tensors: Mapping[str, np.ndarray], plan: StudentPlan, sel: Selection,
                values: Optional[UnitArrays] = None) -> dict[str, np.ndarray]:
    """Fold `values` (if given) into the teacher's weights, then slice out the student."""
    if values is not None:
        tensors = fold_values(tensors, plan.teacher, values)
    return slice_tensors(tensors, plan, sel)


def student_config(plan: StudentPlan, preset: Optional[str], weights: Path, schedule: str = "official"):
    """The student's config.yaml: the target preset's whole config (data, parallel layout, steps) with
    the model section the inheritance decided and `train.init_weights` set to the student, so
    `pangu-pro train OUT/student/config.yaml` continues from it; without a preset, the model only.
    `schedule` official: the official repository's schedule for training from a pruned checkpoint
    (lr 1e-4, 3% warm-up, cosine to 1e-5) replaces the preset's from-scratch one; preset: kept."""
    import dataclasses

    from pangu_pro.config import Config, load_config
    from pangu_pro.train.schedule import (OFFICIAL_CONTINUED_LR, OFFICIAL_CONTINUED_MIN_LR_RATIO,
                                          OFFICIAL_CONTINUED_WARMUP_FRACTION)

    if preset is None:
        return Config(model=plan.student)
    config = load_config(preset)
    train = dataclasses.replace(config.train, init_weights=str(weights))
    if schedule == "official":
        train = dataclasses.replace(train, lr=OFFICIAL_CONTINUED_LR, warmup_steps=0,
                                    warmup_fraction=OFFICIAL_CONTINUED_WARMUP_FRACTION,
                                    min_lr_ratio=OFFICIAL_CONTINUED_MIN_LR_RATIO)
    elif schedule != "preset":
        raise ValueError(f"student schedule must be official or preset, got {schedule!r}")
    return dataclasses.replace(config, model=plan.student, train=train)


def write_student(out_dir: str | Path, tensors: Mapping[str, np.ndarray], plan: StudentPlan, sel: Selection,
                  metadata: Optional[dict] = None, preset: Optional[str] = None, schedule: str = "official") -> Path:
    """Write ``out_dir/model.safetensors``, ``out_dir/config.yaml`` (`student_config`) and
    ``out_dir/selection.json``; returns `out_dir`."""
    from pangu_pro.config import save_config
    from pangu_pro.io import atomic_write_json
    from pangu_pro.tensors import save_tensors
    from pangu_pro.model.weights import WEIGHTS_NAME

    out_dir = Path(out_dir)
    meta = {"format": "pangu-pro student", "layers": ",".join(str(int(i)) for i in sel.layers)}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    save_tensors(out_dir / WEIGHTS_NAME, tensors, meta)
    save_config(student_config(plan, preset, out_dir / WEIGHTS_NAME, schedule), out_dir / "config.yaml")
    atomic_write_json(out_dir / "selection.json", {**sel.as_json(), **(metadata or {})})
    return out_dir
