"""`pangu-pro select`: a scores file -> the next round's index file.

The output OUT.npy is an int64 array of **sample** indices, in the order the next round reads them
(`DataConfig.index_file`, or `create_dataset(indices=...)`): the drawn units arranged by `order`
(default: a seeded shuffle of the units; a drawn short last unit is moved to the end), each unit
expanded to its samples in round 1's order (`scoring.unit_order`). A unit is k whole optimizer-step
batches of round 1 (`scoring`), so with the next round's global batch equal to round 1's, every
optimizer step of the next round reads exactly the samples of one of round 1's steps, and each unit
fills exactly k steps. OUT with suffix .json records how the draw was made.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pangu_pro.io import atomic_path, atomic_write_json
from pangu_pro.provenance import check_same_shards, selection_record
from pangu_pro.rounds import sampling
from pangu_pro.rounds.scoring import load_scores, unit_order


def select_from_scores(scores: dict, rate: float, *, seed: int = 0, temperature: float = 1.0,
                       unit: str = "batch", order: str = "shuffle") -> tuple[np.ndarray, np.ndarray, dict]:
    """(sample indices, unit ids, report) for a loaded scores file (`scoring.load_scores`)."""
    if unit not in sampling.UNITS:
        raise ValueError(f"unit must be one of {sampling.UNITS}, got {unit!r}")
    values = scores["unit_loss"] if unit == "batch" else scores["sample_loss"]
    values = sampling.check_scores(values, f"{unit} scores")
    units = sampling.select(values, rate, seed=seed, temperature=temperature, order=order)
    if unit == "batch":
        units = short_unit_last(units, scores["num_samples"], scores["unit_size"])
    first_pass = unit_order(scores.get("meta", {}), scores["num_samples"]) if unit == "batch" else None
    samples = sampling.unit_samples(units, unit, scores["unit_size"], scores["num_samples"], first_pass)
    probs = sampling.softmax_probabilities(values, temperature)
    report = {"unit": unit, "rate": rate, "seed": seed, "temperature": temperature, "order": order,
              "units_total": int(values.size), "units_selected": int(units.size),
              "samples_total": scores["num_samples"], "samples_selected": int(samples.size),
              "selected_fraction": samples.size / scores["num_samples"],
              "mean_score": float(values.mean()), "mean_score_selected": float(values[units].mean()),
              "max_first_draw_probability": float(probs.max()),
              "effective_units": float(1.0 / np.square(probs).sum()),
              "unit_size": scores["unit_size"]}
    return samples, units, report


def short_unit_last(units: np.ndarray, num_samples: int, unit_size: int) -> np.ndarray:
    """Move the short last unit (when drawn) to the end, so that every other drawn unit still fills
    whole training batches of the next round."""
    last = sampling.num_units(num_samples, unit_size) - 1
    if num_samples % unit_size == 0 or last not in units:
        return units
    return np.concatenate([units[units != last], [last]]).astype(np.int64)


def check_fits(indices: np.ndarray, num_samples: int, where: str) -> None:
    """An index file must address samples of the dataset it will be read with."""
    if indices.size and (indices.min() < 0 or indices.max() >= num_samples):
        raise ValueError(f"{where}: sample index {int(indices.max())} does not fit the data's {num_samples} samples")


def write_selection(out: str | Path, samples: np.ndarray, units: np.ndarray, report: dict) -> Path:
    """OUT.npy (sample indices) and OUT.json (the report plus the unit ids), each written atomically."""
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"{out}: the index file must end in .npy (DataConfig.index_file reads numpy files)")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, samples.astype(np.int64))
    atomic_write_json(out.with_suffix(".json"), {**report, "units": units.tolist()})
    return out


def select_command(args) -> int:
    scores = load_scores(args.scores)
    if args.data:
        from pangu_pro.data.dataset import count_samples, resolve_files

        if scores["meta"].get("files"):
            check_same_shards(scores["meta"]["files"], resolve_files(args.data), f"{args.scores}", "--data")
        n = count_samples(args.data)
        if n != scores["num_samples"]:
            raise ValueError(f"{args.scores}: scored {scores['num_samples']} samples, but {args.data} holds {n}; "
                             f"the index would not fit")
    samples, units, report = select_from_scores(scores, args.rate, seed=args.seed, temperature=args.temperature,
                                                unit=args.unit, order=args.order)
    out = Path(args.out) if args.out else Path(args.scores).with_name("selection.npy")
    write_selection(out, samples, units, {**report, **selection_record(args.scores, scores["meta"])})
    print(f"selected {report['units_selected']} of {report['units_total']} {args.unit} units "
          f"({report['samples_selected']} samples, {report['selected_fraction']:.1%}); mean score "
          f"{report['mean_score_selected']:.4f} vs {report['mean_score']:.4f} overall; wrote {out}")
    return 0


def read_selection(path: str | Path, num_samples: Optional[int] = None) -> np.ndarray:
    """An index file, checked against `num_samples` when given."""
    from pangu_pro.data.dataset import load_indices

    return load_indices(str(path), num_samples if num_samples is not None else np.iinfo(np.int64).max)
