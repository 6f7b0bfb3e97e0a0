"""Incremental decoding with a static-shape KV cache, and token sampling.

Graph mode compiles one graph per input shape, so decoding keeps every shape fixed:
- the cache is one pair of Parameters per layer, ``[B, kv_heads, max_length, head_dim]`` (the layout
  the attention matmuls read, so a step copies nothing), written in place with ``ScatterNdUpdate``;
- the prompt is left-padded to a bucket length (a power of two), so prefill compiles once per bucket,
  and each new token is one call with ``T = 1`` — one more graph for the whole generation;
- positions and the padding mask are Tensors (a Python int would recompile for every value);
- the step returns the greedy token beside the logits, so greedy decoding feeds it back as the
  next input without a round trip through NumPy, and never copies [B, V] logits to the host.
Left padding is exact: RoPE sees only relative positions, and padded keys are masked out.
Prompts are token ids as given; a text prompt starts with BOS (`pangu_pro.tokens.prompt_ids`), as
every training document does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from pangu_pro.model.layers import DTYPES
from pangu_pro.model.pangu_pi import MASK_VALUE, PanGuPiForCausalLM


@dataclass
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1 switch those filters off."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    eos_token_id: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


def sample_next_tokens(logits: np.ndarray, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                       rng: np.random.Generator | None = None) -> np.ndarray:
    """Next token per row of `logits` [B, V]: argmax, or a draw after temperature, top-k and top-p."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return logits.argmax(axis=-1)
    rng = rng or np.random.default_rng()
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1)
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        keep_sorted = np.cumsum(sorted_probs, axis=-1) - sorted_probs < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs])


class CachedStep(nn.Cell):
    """One incremental step: tokens [B, T] at `positions` [T] -> (logits of the last token [B, V] fp32,
    its argmax [B, 1] int32, ready to be the next step's input)."""

    def __init__(self, network: PanGuPiForCausalLM, batch_size: int, max_length: int):
        super().__init__(auto_prefix=False)  # the network's parameter names stay as they are
        cfg = network.config
        if max_length > cfg.seq_length:
            raise ValueError(f"max_length {max_length} exceeds the model's seq_length {cfg.seq_length}")
        self.network = network
        self.max_length = max_length
        self.batch_size = batch_size
        self.kv_heads = cfg.kv_heads
        shape = (batch_size, cfg.kv_heads, max_length, cfg.head_dim)
        dtype = DTYPES[cfg.compute_dtype]

        def cache(name):
            return Parameter(Tensor(np.zeros(shape), dtype), name=name, requires_grad=False)

        self.k_caches = ParameterTuple([cache(f"kv_cache.k{i}") for i in range(cfg.num_layers)])
        self.v_caches = ParameterTuple([cache(f"kv_cache.v{i}") for i in range(cfg.num_layers)])
        self.key_positions = Tensor(np.arange(max_length, dtype=np.int32))
        # (b, kv) of every cache row, [B, KV, 1, 2]; a step appends its positions as the third index
        grid = np.stack(np.meshgrid(np.arange(batch_size), np.arange(cfg.kv_heads), indexing="ij"), axis=-1)
        self.row_grid = Tensor(grid[:, :, None, :].astype(np.int32))
        self.argmax = ops.Argmax(axis=-1, output_type=ms.int32)

    def construct(self, input_ids, positions, key_valid):
        b, t = self.batch_size, positions.shape[0]
        cache_index = ops.concat((ops.tile(self.row_grid, (1, 1, t, 1)),
                                  ops.tile(positions.reshape(1, 1, t, 1), (b, self.kv_heads, 1, 1))), -1)
        # allowed[b, 0, i, j]: key j is not in the future of query i and is not padding
        causal = self.key_positions.reshape(1, 1, 1, -1) <= positions.reshape(1, 1, -1, 1)
        allowed = ops.logical_and(causal, key_valid.reshape(key_valid.shape[0], 1, 1, -1))
        mask = ops.select(allowed, ops.zeros(allowed.shape, ms.float32),
                          ops.fill(ms.float32, allowed.shape, MASK_VALUE))
        hidden = self.network.model.forward_cached(input_ids, positions, cache_index, mask, self.k_caches,
                                                   self.v_caches)
        logits = self.network.head(hidden[:, -1:, :]).squeeze(1)
        return logits, self.argmax(logits).reshape(b, 1)


def prefill_length(prompt_length: int, max_new_tokens: int, max_length: int, minimum: int = 16) -> int:
    """The padded prompt length: the next power of two (>= minimum) that leaves room to decode."""
    room = max_length - max_new_tokens
    if prompt_length > room:
        raise ValueError(f"a prompt of {prompt_length} tokens plus {max_new_tokens} new tokens exceeds "
                         f"the maximum length {max_length}")
    bucket = max(minimum, 1 << max(prompt_length - 1, 0).bit_length())
    return min(bucket, room)


class Generator:
    """Batched generation with a KV cache; compiles twice per (batch size, prompt bucket)."""

    def __init__(self, network: PanGuPiForCausalLM, max_length: int | None = None):
        self.network = network
        self.max_length = max_length or network.config.seq_length
        self.steps: dict[int, CachedStep] = {}

    def step_cell(self, batch_size: int) -> CachedStep:
        if batch_size not in self.steps:
            self.steps[batch_size] = CachedStep(self.network, batch_size, self.max_length)
        return self.steps[batch_size]

    def generate(self, prompts: list[list[int]], sampling: SamplingConfig | None = None,
                 on_token=None) -> list[list[int]]:
        """New tokens for each prompt (stopping after EOS). `on_token(step, tokens)` sees each step."""
        sampling = sampling or SamplingConfig()
        sampling.validate()
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        vocab = self.network.config.vocab_size
        if any(not 0 <= t < vocab for p in prompts for t in p):
            raise ValueError(f"prompt token ids must lie in [0, {vocab})")
        batch = len(prompts)
        longest = max(len(p) for p in prompts)
        width = prefill_length(longest, sampling.max_new_tokens, self.max_length)
        ids = np.zeros((batch, width), np.int32)
        valid = np.zeros((batch, self.max_length), bool)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = prompt
            valid[row, width - len(prompt):] = True
        valid[:, width:] = True  # generated tokens
        step = self.step_cell(batch)
        key_valid = Tensor(valid)
        rng = np.random.default_rng(sampling.seed)
        greedy = sampling.temperature == 0
        logits, next_ids = step(Tensor(ids), Tensor(np.arange(width, dtype=np.int32)), key_valid)
        outputs: list[list[int]] = [[] for _ in range(batch)]
        finished = np.zeros(batch, bool)
        for i in range(sampling.max_new_tokens):
            if greedy:  # argmax taken in the graph; the [B, 1] tensor goes straight back in
                tokens = next_ids.asnumpy()[:, 0]
            else:
                tokens = sample_next_tokens(logits.asnumpy(), sampling.temperature, sampling.top_k,
                                            sampling.top_p, rng)
                next_ids = Tensor(tokens.astype(np.int32)[:, None])
            for row in np.flatnonzero(~finished):
                outputs[row].append(int(tokens[row]))
            if sampling.eos_token_id is not None:
                finished |= tokens == sampling.eos_token_id
            if on_token is not None:
                on_token(i, tokens)
            if finished.all() or i + 1 == sampling.max_new_tokens:
                break
            logits, next_ids = step(next_ids, Tensor(np.array([width + i], np.int32)), key_valid)
        return outputs
