"""The PanGu-pi cells against references: NumPy formulas, MindFormers' LLaMA, and their own invariants."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from pangu_pro.config import ModelConfig
from pangu_pro.model import PanGuPiForCausalLM, PanGuPiWithLoss
from pangu_pro.model.generation import CachedStep, Generator, SamplingConfig, prefill_length, sample_next_tokens
from pangu_pro.model.layers import AugmentedShortcut, SeriesInformedActivation
from pangu_pro.model.params import count_parameters
from pangu_pro.model.weights import load_state, model_state

from tests import numpy_reference as ref

SMALL = ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=96, seq_length=64, aug_shortcut_ratio=8)


def randomized(model, seed=0, scale=0.2):
    """Give every parameter random values (zero-initialised W_up and SIAF's extra terms included)."""
    rng = np.random.default_rng(seed)
    state = {name: (rng.standard_normal(v.shape) * (scale if v.ndim > 1 else 0.1) + (v.ndim == 1)).astype(np.float32)
             for name, v in model_state(model).items()}
    load_state(model, state)
    return state


def next_token_logits(model, seqs: list[list[int]], width: int = SMALL.seq_length) -> np.ndarray:
    """The logits after each sequence's last token, from one full forward of the fixed shape
    [len(seqs), width]: right padding is invisible to a causal model, and one shape compiles one graph
    (a forward per sequence length compiled a graph per length)."""
    ids = np.zeros((len(seqs), width), np.int32)
    for row, seq in zip(ids, seqs):
        row[:len(seq)] = seq
    logits = model(Tensor(ids)).asnumpy()
    return np.stack([logits[i, len(seq) - 1] for i, seq in enumerate(seqs)])


def greedy_by_full_forwards(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy continuations recomputed with a full forward per token (no cache)."""
    seqs = [list(p) for p in prompts]
    for _ in range(new_tokens):
        for seq, token in zip(seqs, next_token_logits(model, seqs).argmax(-1)):
            seq.append(int(token))
    return [seq[len(p):] for seq, p in zip(seqs, prompts)]


@pytest.fixture(scope="module")
def small_model():
    ms.set_seed(0)
    model = PanGuPiForCausalLM(SMALL)
    state = randomized(model)
    return model, state


def test_siaf_matches_numpy_formula():
    rng = np.random.default_rng(1)
    cell = SeriesInformedActivation(channels=12, terms=3)
    scale, bias = rng.standard_normal((2, 3, 12)).astype(np.float32)
    cell.scale.set_data(Tensor(scale))
    cell.bias.set_data(Tensor(bias))
    x = rng.standard_normal((2, 5, 12)).astype(np.float32)
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), ref.siaf(x, scale, bias), rtol=1e-5, atol=1e-6)


def test_siaf_starts_as_plain_silu():
    x = np.linspace(-4, 4, 24, dtype=np.float32).reshape(2, 12)
    cell = SeriesInformedActivation(channels=12, terms=2)
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), ref.silu(x), rtol=1e-6, atol=1e-7)


def test_aug_shortcut_matches_numpy_formula():
    rng = np.random.default_rng(2)
    cell = AugmentedShortcut(hidden_size=32, bottleneck=4)
    assert not cell.up.weight.asnumpy().any(), "W_up starts at zero, so T(Z) = 0 for a fresh model"
    down, up = rng.standard_normal((4, 32)).astype(np.float32), rng.standard_normal((32, 4)).astype(np.float32)
    cell.down.weight.set_data(Tensor(down))
    cell.up.weight.set_data(Tensor(up))
    z = rng.standard_normal((2, 3, 32)).astype(np.float32)
    np.testing.assert_allclose(cell(Tensor(z)).asnumpy(), ref.aug_shortcut(z, down, up), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("siaf,aug,kv,tied", [(True, True, 2, False), (False, False, None, True), (True, False, 1, False)])
def test_full_model_matches_numpy_reference(siaf, aug, kv, tied):
    cfg = dataclasses.replace(SMALL, siaf=siaf, aug_shortcut=aug, num_kv_heads=kv, tie_word_embeddings=tied)
    model = PanGuPiForCausalLM(cfg)
    state = randomized(model, seed=3)
    ids = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, 11)).astype(np.int32)
    expected = ref.forward(state, cfg, ids)
    np.testing.assert_allclose(model(Tensor(ids)).asnumpy(), expected, rtol=1e-4, atol=2e-4)


def test_plain_model_equals_mindformers_llama():
    """With both PanGu-pi modules off, our logits equal MindFormers' own LlamaForCausalLM."""
    from mindformers import LlamaConfig, LlamaForCausalLM

    cfg = dataclasses.replace(SMALL, siaf=False, aug_shortcut=False, seq_length=16)
    ours = PanGuPiForCausalLM(cfg)
    state = randomized(ours, seed=5)
    peer_cfg = LlamaConfig(batch_size=2, seq_length=16, hidden_size=64, num_layers=2, num_heads=4, n_kv_heads=2,
                           intermediate_size=96, vocab_size=256, rms_norm_eps=1e-5, theta=10000.0,
                           compute_dtype="float32", layernorm_compute_type="float32",
                           softmax_compute_type="float32", rotary_dtype="float32", param_init_type="float32",
                           use_rope_slice=True, fused_rms_norm=False, use_flash_attention=False, use_past=False)
    peer = LlamaForCausalLM(peer_cfg)
    peer.set_train(False)
    renames = {"model.embed_tokens.weight": "model.tok_embeddings.embedding_weight", "model.norm.weight": "model.norm_out.weight"}
    peer_params = {p.name: p for p in peer.get_parameters()}
    assert len(peer_params) == len(state)
    for name, value in state.items():
        peer_params[renames.get(name, name)].set_data(Tensor(value))
    ids = np.random.default_rng(6).integers(0, 256, (2, 16)).astype(np.int32)
    peer_logits = peer(Tensor(ids))[0].asnumpy()
    np.testing.assert_allclose(ours(Tensor(ids)).asnumpy(), peer_logits.reshape(2, 16, 256), rtol=1e-4, atol=1e-4)


def test_future_tokens_never_change_earlier_logits(small_model):
    model, _ = small_model
    ids = np.random.default_rng(7).integers(0, 256, (1, 12)).astype(np.int32)
    changed = ids.copy()
    changed[0, 8:] = (changed[0, 8:] + 17) % 256
    a, b = model(Tensor(ids)).asnumpy(), model(Tensor(changed)).asnumpy()
    np.testing.assert_array_equal(a[0, :8], b[0, :8])
    assert np.abs(a[0, 8:] - b[0, 8:]).max() > 1e-3


def test_loss_mask_and_ignore_index(small_model):
    model, state = small_model
    loss_fn = PanGuPiWithLoss(model)
    rng = np.random.default_rng(8)
    ids = rng.integers(0, 256, (2, 13)).astype(np.int32)
    logits = ref.forward(state, SMALL, ids[:, :-1])
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(float(loss_fn(Tensor(ids))), nll.mean(), rtol=1e-4)
    # right padding masked out: the loss of the real tokens stays the same
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    padded = ids.copy()
    padded[1, 9:] = 0
    expected = (nll[0].sum() + nll[1, :8].sum()) / (12 + 8)
    np.testing.assert_allclose(float(loss_fn(Tensor(padded), Tensor(mask))), expected, rtol=1e-4)
    # ignore_index labels count as masked too
    ignored = ids.copy()
    ignored[1, 9:] = SMALL.ignore_index
    np.testing.assert_allclose(float(loss_fn(Tensor(ignored))), expected, rtol=1e-4)


def test_kv_cache_decoding_matches_full_forward_token_by_token(small_model):
    model, _ = small_model
    step = CachedStep(model, batch_size=2, max_length=SMALL.seq_length)
    rng = np.random.default_rng(9)
    ids = rng.integers(0, 256, (2, 20)).astype(np.int32)
    full = model(Tensor(ids)).asnumpy()
    valid = Tensor(np.ones((2, SMALL.seq_length), bool))
    prompt = 8
    logits, tokens = step(Tensor(ids[:, :prompt]), Tensor(np.arange(prompt, dtype=np.int32)), valid)
    np.testing.assert_allclose(logits.asnumpy(), full[:, prompt - 1], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(tokens.asnumpy()[:, 0], full[:, prompt - 1].argmax(-1))
    for pos in range(prompt, 20):
        logits, tokens = step(Tensor(ids[:, pos:pos + 1]), Tensor(np.array([pos], np.int32)), valid)
        np.testing.assert_allclose(logits.asnumpy(), full[:, pos], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(tokens.asnumpy()[:, 0], full[:, pos].argmax(-1))
    assert len(step.compile_cache) == 2, "one graph for the prefill shape, one for all decode steps"


def test_generator_greedy_equals_recomputed_argmax_with_ragged_prompts(small_model):
    model, _ = small_model
    generator = Generator(model, max_length=SMALL.seq_length)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15]]
    outputs = generator.generate(prompts, SamplingConfig(max_new_tokens=12))
    assert outputs == greedy_by_full_forwards(model, prompts, 12)
    assert len(generator.steps[2].compile_cache) == 2, "a long generation must not recompile per token"


@pytest.mark.parametrize("pangu", [False, True], ids=["llama", "pangu"])
@pytest.mark.parametrize("batch", [1, 8])
def test_greedy_generation_equals_full_forward_loop_with_left_padding(pangu, batch):
    """Token for token against argmax of a full forward per token, prompts of different lengths."""
    cfg = dataclasses.replace(SMALL, siaf=pangu, aug_shortcut=pangu)
    ms.set_seed(1)
    model = PanGuPiForCausalLM(cfg)
    randomized(model, seed=batch)
    rng = np.random.default_rng(batch)
    prompts = [rng.integers(0, cfg.vocab_size, int(n)).tolist() for n in rng.integers(1, 12, batch)]
    new_tokens = 10
    generator = Generator(model, max_length=cfg.seq_length)
    outputs = generator.generate(prompts, SamplingConfig(max_new_tokens=new_tokens))
    assert outputs == greedy_by_full_forwards(model, prompts, new_tokens)
    assert len(generator.steps[batch].compile_cache) == 2, "one prefill graph and one decode graph"
    again = generator.generate(prompts, SamplingConfig(max_new_tokens=new_tokens))
    assert again == outputs and len(generator.steps[batch].compile_cache) == 2, "a second run reuses both"


def test_sampled_generation_equals_sampling_full_forward_logits(small_model):
    """The sampling path (logits to the host, token back in) draws what the same sampler draws from full
    forwards with the same seed."""
    model, _ = small_model
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12]]
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=20, seed=3)
    outputs = Generator(model, max_length=SMALL.seq_length).generate(prompts, sampling)
    rng = np.random.default_rng(3)
    seqs = [list(p) for p in prompts]
    for _ in range(6):
        logits = next_token_logits(model, seqs)
        for seq, token in zip(seqs, sample_next_tokens(logits, 1.0, 20, 1.0, rng)):
            seq.append(int(token))
    assert outputs == [seq[4:] for seq in seqs]


def test_generation_stops_at_eos(small_model):
    model, _ = small_model
    generator = Generator(model, max_length=SMALL.seq_length)
    first = generator.generate([[3, 4, 5]], SamplingConfig(max_new_tokens=6))[0]
    eos = first[2]
    stopped = generator.generate([[3, 4, 5]], SamplingConfig(max_new_tokens=6, eos_token_id=eos))[0]
    assert stopped == first[: first.index(eos) + 1]


def test_sampling_filters():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(0)
    assert sample_next_tokens(logits)[0] == 0
    draws = [sample_next_tokens(logits, 1.0, top_k=2, rng=rng)[0] for _ in range(300)]
    assert set(draws) == {0, 1}
    draws = [sample_next_tokens(logits, 1.0, top_p=0.7, rng=rng)[0] for _ in range(300)]
    assert set(draws) == {0, 1}  # 0.5 < 0.7, so the second token is needed too; the third is not
    assert abs(np.mean(np.array(draws) == 0) - 0.5 / 0.8) < 0.1


def test_prefill_length_buckets():
    assert prefill_length(3, 10, 64) == 16
    assert prefill_length(17, 10, 64) == 32
    assert prefill_length(40, 10, 64) == 54  # bucket 64 leaves no room: shrink to what fits
    with pytest.raises(ValueError, match="exceeds the maximum length"):
        prefill_length(60, 10, 64)


@pytest.mark.parametrize("changes", [{}, {"num_kv_heads": None, "tie_word_embeddings": True},
                                     {"siaf": False, "aug_shortcut": False}, {"siaf_terms": 3}])
def test_analytic_count_equals_instantiated_model(changes):
    cfg = dataclasses.replace(SMALL, **changes)
    model = PanGuPiForCausalLM(cfg)
    assert sum(p.size for p in model.trainable_params()) == count_parameters(cfg).total
