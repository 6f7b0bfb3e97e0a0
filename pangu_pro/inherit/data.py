"""Do the mask-training data's token ids mean what the teacher reads? Checked before any compute.

With `inherit.vocab_map` the teacher is remapped to the compact vocabulary first (its embedding and
head rows gathered through `new2old`, `pangu_pro.tokenizer.remap`), so the data must be made with the
compact tokenizer: ids in [0, len(new2old)). Without a map the data's ids index the teacher's own
vocabulary. Three checks, each error naming the data file and the file it disagrees with:

- the tokenizer: a preprocess folder's ``summary.json`` records the tokenizer's SHA-256 and size; it
  must be the compact tokenizer recorded in the map's ``.json`` (written beside the ``.npy`` by
  `tokenizer compress`), not its source, and its size must be the vocabulary the model is fed
  (without a map: at most that vocabulary, which may be padded);
- the token convention the summary records must be the one the teacher is scored with
  (`pangu_pro.tokens`; a summary without it is the old one, with no ``<s>``);
- the maximum id of up to `MAX_ID_SAMPLES` sequences spread evenly over the data (every folder or file)
  must be below that vocabulary.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pangu_pro.configtools import ConfigError
from pangu_pro.io import read_json
from pangu_pro.tokens import convention_problem

MAX_ID_SAMPLES = 512


def _map_record(vocab_map: Optional[str]) -> Optional[dict]:
    """The `.json` beside a new2old map (tokenizer digests), if there is one."""
    if vocab_map is None:
        return None
    record = Path(vocab_map).with_suffix(".json")
    if not record.is_file():
        return None
    return read_json(record)


def _max_id(path: str) -> int:
    from pangu_pro.data.dataset import count_samples, create_dataset

    total = count_samples(path)
    picks = np.unique(np.linspace(0, total - 1, min(total, MAX_ID_SAMPLES)).astype(np.int64))
    ds = create_dataset(path, 64, shuffle=False, indices=picks, drop_remainder=False, num_parallel_workers=1)
    return max(int(ids.max()) for (ids,) in ds.create_tuple_iterator(num_epochs=1, output_numpy=True))


def check_data_vocabulary(files: Sequence[str], vocab_size: int, model_file: str, vocab_map: Optional[str],
                          source: Optional[str] = None) -> None:
    """Raise a ConfigError when a data folder or file was made for another vocabulary (module doc).

    `vocab_size` is the vocabulary of the model the data feeds, described by `model_file` (the id map
    when there is one, else the teacher's config)."""
    record = _map_record(vocab_map)
    for raw in files:
        path = Path(raw)
        summary = path / "summary.json" if path.is_dir() else None
        if summary is not None and summary.is_file():
            data_summary = read_json(summary)
            problem = convention_problem(data_summary, str(summary))
            if problem:
                raise ConfigError("data.train_files", problem, source)
            tok = data_summary.get("tokenizer") or {}
            made_with = f"{tok.get('path', '?')} (sha256 {str(tok.get('sha256', '?'))[:12]}…)"
            if record is not None and tok.get("sha256") not in (None, record.get("compact_sha256")):
                which = ("the teacher's full tokenizer" if tok.get("sha256") == record.get("source_sha256")
                         else "another tokenizer")
                raise ConfigError("data.train_files", f"{summary}: the data was made with {which}, {made_with}; "
                                  f"{Path(vocab_map).with_suffix('.json')} maps the teacher to the compact "
                                  f"tokenizer {record.get('compact_tokenizer')} — preprocess the data with that "
                                  f"one", source)
            pieces = tok.get("vocab_size")
            # with a map the compact tokenizer is exactly the vocabulary fed; without one the model's
            # vocabulary may be larger (padded, or a teacher trained on this tokenizer), never smaller
            if pieces is not None and (int(pieces) > vocab_size
                                       or (vocab_map is not None and int(pieces) != vocab_size)):
                raise ConfigError("data.train_files", f"{summary}: the data's tokenizer {made_with} has "
                                  f"{tok['vocab_size']} pieces, but {model_file} gives the model {vocab_size}",
                                  source)
        largest = _max_id(str(path))
        if largest >= vocab_size:
            raise ConfigError("data.train_files", f"{path}: maximum id {largest} does not fit the {vocab_size}-id "
                              f"vocabulary that {model_file} gives the model (was the data made with another "
                              f"tokenizer?)", source)
