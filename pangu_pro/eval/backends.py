"""Scoring backends: our MindSpore model (graph mode, one compiled graph per length bucket) and an
exported Hugging Face folder (PyTorch), both giving ``log p(next token | prefix)`` per position."""
from __future__ import annotations

import numpy as np


def _token_logprobs_cell(network):
    import mindspore as ms
    from mindspore import nn, ops

    class TokenLogProbs(nn.Cell):
        """ids [B, T], targets [B, T] -> log_softmax(logits)[b, t, targets[b, t]] [B, T] (fp32)."""

        def __init__(self, net):
            super().__init__(auto_prefix=False)  # keep the network's parameter names
            self.network = net
            self.log_softmax = ops.LogSoftmax(axis=-1)
            self.gather_d = ops.GatherD()
            self.cast = ops.Cast()

        def construct(self, ids, targets):
            logp = self.log_softmax(self.cast(self.network(ids), ms.float32))
            return self.gather_d(logp, 2, targets.expand_dims(-1)).squeeze(-1)

    cell = TokenLogProbs(network)
    cell.set_train(False)
    return cell


class MindSporeBackend:
    """A PanGuPiForCausalLM as a scoring backend. `cell.compile_cache` counts its compiled graphs."""

    def __init__(self, network, batch_size: int = 8):
        from mindspore import Tensor

        self._tensor = Tensor
        self.network = network
        self.cell = _token_logprobs_cell(network)
        self.batch_size = batch_size
        self.max_length = network.config.seq_length + 1  # BOS + seq_length predicted tokens

    def token_logprobs(self, ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return self.cell(self._tensor(ids.astype(np.int32)), self._tensor(targets.astype(np.int32))).asnumpy()

    @property
    def compiled_graphs(self) -> int:
        return len(self.cell.compile_cache)


class HFBackend:
    """An exported Hugging Face folder (AutoModelForCausalLM, trust_remote_code for PanGu-pi modules)."""

    def __init__(self, folder, batch_size: int = 8, max_length: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True,
                                                          torch_dtype=torch.float32)
        self.model.eval()
        self.batch_size = batch_size
        self.max_length = max_length or int(self.model.config.max_position_embeddings) + 1

    def token_logprobs(self, ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad():
            logits = self.model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(2, torch.from_numpy(targets.astype(np.int64)).unsqueeze(-1)).squeeze(-1)
        return picked.numpy()
