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


def evaluate_loss(loss_net, dataset, max_batches: Optional[int] = None) -> dict:
    """Mean loss and perplexity of `loss_net` (a PanGuPiWithLoss) over `dataset`'s input_ids batches."""
    loss_net.set_train(False)
    total, samples, batches = 0.0, 0, 0
    for (input_ids,) in dataset.create_tuple_iterator(num_epochs=1):
        if max_batches is not None and batches >= max_batches:
            break
        n = int(input_ids.shape[0])
        total += float(loss_net(input_ids).asnumpy()) * n
        samples += n
        batches += 1
    if samples == 0:
        raise ValueError("no held-out samples to evaluate")
    loss = total / samples
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "samples": samples, "batches": batches}


def perplexity(config, checkpoint, files, batch_size: Optional[int] = None,
               max_batches: Optional[int] = None) -> dict:
    """Held-out loss/perplexity of the weights in `checkpoint` (file or checkpoint folder) on `files`."""
    from pangu_pro.model.pangu_pi import PanGuPiWithLoss
    from pangu_pro.model.weights import build_model
    from pangu_pro.runtime import adapt_to_device, init_mindspore

    init_mindspore()
    model = build_model(adapt_to_device(config.model), weights=checkpoint)
    dataset = eval_dataset(files, batch_size or config.train.batch_size)
    result = evaluate_loss(PanGuPiWithLoss(model), dataset, max_batches)
    result["checkpoint"] = str(checkpoint)
    return result
