"""data stage: text → packed MindRecord samples → training batches.

* `corpus`: the built-in offline English corpus (`pangu-pro corpus builtin`);
* `preprocess`: SentencePiece tokenization, EOS-joined packing into `seq_length + 1` token samples,
  MindRecord shards and a summary (`pangu-pro preprocess`);
* `dataset`: the deterministic MindDataset loader (seeded shuffle, data-parallel ranks, exact resume,
  index subsets) and `read_samples` for tests and scoring.
"""
