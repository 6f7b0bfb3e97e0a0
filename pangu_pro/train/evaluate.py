"""Held-out loss and perplexity: used every `train.eval_every` steps and by `pangu-pro perplexity`.

The loss is the mean next-token cross-entropy over the evaluated samples (each batch's mean loss
weighted by its number of samples; with packed data every sample has the same number of counted
tokens, so this is the per-token mean). Perplexity = exp(loss).
"""
from __future__ import annotations

import math
from typing import Optional


def eval_dataset(files, batch_size: int, rank: int = 0, world: int = 1):
    """The held-out data in file order, unshuffled, keeping the last partial batch."""
    from pangu_pro.data.dataset import create_dataset

    return create_dataset(files, batch_size, shuffle=False, rank=rank, world=world, drop_remainder=False)


def pad_batch(input_ids, rows: int):
    """(input_ids, loss mask) of `rows` rows: a short batch is padded with copies of its first row that the
    mask leaves out, so every batch runs at one shape (one compiled graph)."""
    import numpy as np

    n = int(input_ids.shape[0])
    mask = np.ones((rows, input_ids.shape[1]), np.float32)
    mask[n:] = 0.0
    return np.concatenate([input_ids, np.repeat(input_ids[:1], rows - n, 0)]), mask


def evaluate_loss(loss_net, dataset, max_batches: Optional[int] = None) -> dict:
    """Mean loss and perplexity of `loss_net` (a PanGuPiWithLoss) over `dataset`'s input_ids batches.

    Every batch runs at the first batch's shape with a loss mask: the last, short batch is padded with
    copies of its first row that the mask leaves out, so the pass compiles one graph (a short batch
    would compile a second one, as long as the first); the mask of a full batch is all ones."""
    import numpy as np
    from mindspore import Tensor

    loss_net.set_train(False)
    total, samples, batches, rows = 0.0, 0, 0, None
    for (input_ids,) in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
        if max_batches is not None and batches >= max_batches:
            break
        n = int(input_ids.shape[0])
        rows = rows or n
        input_ids, mask = pad_batch(input_ids, rows)
        total += float(loss_net(Tensor(input_ids), Tensor(mask)).asnumpy()) * n
        samples += n
        batches += 1
    if samples == 0:
        raise ValueError("no held-out samples to evaluate")
    loss = total / samples
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "samples": samples, "batches": batches}


class CheckpointEvaluator:
    """Held-out loss of any number of checkpoints of one model: the network is built (and compiled, per
    batch shape) once, each checkpoint's weights loaded into it, so a multi-round run or a benchmark
    evaluating many checkpoints compiles once instead of once per checkpoint."""

    def __init__(self, model_cfg):
        from pangu_pro.model.pangu_pi import PanGuPiWithLoss
        from pangu_pro.model.weights import build_model
        from pangu_pro.runtime import adapt_to_device, init_mindspore

        init_mindspore()
        self.model_cfg = model_cfg
        self.model = build_model(adapt_to_device(model_cfg))
        self.net = PanGuPiWithLoss(self.model)

    def __call__(self, checkpoint, files, batch_size: int, max_batches: Optional[int] = None) -> dict:
        from pangu_pro.model.weights import load_weights

        load_weights(self.model, checkpoint)
        result = evaluate_loss(self.net, eval_dataset(files, batch_size), max_batches)
        result["checkpoint"] = str(checkpoint)
        return result


def perplexity(config, checkpoint, files, batch_size: Optional[int] = None,
               max_batches: Optional[int] = None) -> dict:
    """Held-out loss/perplexity of the weights in `checkpoint` (file or checkpoint folder) on `files`."""
    return CheckpointEvaluator(config.model)(checkpoint, files, batch_size or config.train.batch_size, max_batches)
