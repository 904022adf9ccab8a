"""Chunked logprobs: equal values and gradients to the unchunked path, and memory kept for backward
that does not grow with the vocabulary."""

from collections.abc import Callable, Iterable

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from sorl.loss import chunked_logprobs_from_hidden, sequence_logprobs_from_logits
from sorl.policy import EMBEDDED_POLICY, completion_logprobs, load_policy

TOL = dict(atol=1e-6, rtol=1e-5)  # float32 values: only the summation order differs


def _assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, relative: float, name: str = "") -> None:
    """|actual - expected| <= relative * max|expected| elementwise: gradients are sums over tokens
    (the weight's over chunks, in another order), so their rounding scales with the largest entry,
    not with each entry (near-zero entries come from cancellation)."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=relative * scale, msg=lambda m: f"{name}: {m}")


def _saved_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor]) -> tuple[int, object]:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs, leaving out
    those of ``exclude`` (parameters: saving a parameter costs no memory), and ``fn``'s result."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return sum(storages.values()), result


def _smollm2_shaped(vocab_size: int = 49152, tie: bool = True) -> LlamaForCausalLM:
    """SmolLM2-135M's vocabulary and tied embeddings, with few layers and a small hidden size."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).train()


def _batch(vocab_size: int, prompt_lengths: list[int], completion_lengths: list[int], pad_id: int = 0):
    """Left-padded prompts then right-padded completions, as the DataModule's collate lays them out."""
    generator = torch.Generator().manual_seed(1)
    width_p, width_c = max(prompt_lengths), max(completion_lengths)
    rows = len(prompt_lengths)
    input_ids = torch.full((rows, width_p + width_c), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, (p, c) in enumerate(zip(prompt_lengths, completion_lengths)):
        input_ids[row, width_p - p : width_p + c] = torch.randint(1, vocab_size, (p + c,), generator=generator)
        attention_mask[row, width_p - p : width_p + c] = 1
    return input_ids, attention_mask, input_ids[:, width_p:]


def _logprobs_and_grads(model, input_ids, attention_mask, completion_ids, chunk_size, share_prompts=False):
    model.zero_grad(set_to_none=True)
    logprobs, entropy = completion_logprobs(
        model, input_ids, attention_mask, completion_ids, 0.7, chunk_size=chunk_size, share_prompts=share_prompts
    )
    # A weighted sum, so that every position's gradient matters and differs.
    weights = torch.linspace(-1.0, 2.0, logprobs.numel()).view_as(logprobs)
    (logprobs * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return logprobs.detach(), entropy, grads


# ---------------------------------------------------------------- the helper on its own
@pytest.mark.parametrize("chunk_size", [1, 5, 7, 24, 1000])  # 24 = B*T: one chunk; 1000: more than all
@pytest.mark.parametrize("with_bias", [False, True])
def test_helper_matches_unchunked_values_and_gradients(chunk_size: int, with_bias: bool):
    torch.manual_seed(0)
    hidden = torch.randn(3, 8, 16, requires_grad=True)  # [B, T, H]
    weight = torch.randn(50, 16, requires_grad=True)  # [V, H]
    bias = torch.randn(50, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 50, (3, 8))
    upstream = torch.randn(3, 8)
    leaves = [t for t in (hidden, weight, bias) if t is not None]

    reference, reference_entropy = sequence_logprobs_from_logits(
        torch.nn.functional.linear(hidden, weight, bias), targets, temperature=0.7
    )
    reference_grads = torch.autograd.grad((reference * upstream).sum(), leaves)
    chunked, entropy = chunked_logprobs_from_hidden(hidden, weight, bias, targets, 0.7, chunk_size)
    grads = torch.autograd.grad((chunked * upstream).sum(), leaves)

    assert chunked.dtype == torch.float32 and not entropy.requires_grad
    torch.testing.assert_close(chunked, reference, **TOL)
    torch.testing.assert_close(entropy, reference_entropy, **TOL)
    for grad, reference_grad in zip(grads, reference_grads):
        _assert_close_to_scale(grad, reference_grad, 1e-6)


def test_helper_without_grad_and_empty():
    torch.manual_seed(0)
    hidden, weight, targets = torch.randn(2, 5, 8), torch.randn(30, 8), torch.randint(0, 30, (2, 5))
    with torch.no_grad():
        chunked, entropy = chunked_logprobs_from_hidden(hidden, weight, None, targets, 1.3, chunk_size=3)
        reference, reference_entropy = sequence_logprobs_from_logits(hidden @ weight.T, targets, 1.3)
    torch.testing.assert_close(chunked, reference, **TOL)
    torch.testing.assert_close(entropy, reference_entropy, **TOL)
    empty, empty_entropy = chunked_logprobs_from_hidden(hidden[:, :0], weight, None, targets[:, :0], 1.0, 4)
    assert empty.shape == empty_entropy.shape == (2, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logprobs_from_hidden(hidden, weight, None, targets, 1.0, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        chunked_logprobs_from_hidden(hidden, weight, None, targets, 0.0)


def test_helper_saves_nothing_of_size_vocab():
    """Autograd keeps the hidden states (B*T*H), never [B, T, V]: the saved bytes are the same for
    two vocabularies, while the unchunked reference's grow by at least 4*B*T*(V2 - V1) bytes."""
    torch.manual_seed(0)
    hidden = torch.randn(4, 64, 16, requires_grad=True)
    targets = torch.randint(0, 100, (4, 64))
    chunked, unchunked = {}, {}
    for vocab in (100, 4000):
        weight = torch.randn(vocab, 16, requires_grad=True)
        chunked[vocab], _ = _saved_bytes(
            lambda: chunked_logprobs_from_hidden(hidden, weight, None, targets, 0.7, chunk_size=32), [weight]
        )
        unchunked[vocab], _ = _saved_bytes(
            lambda: sequence_logprobs_from_logits(hidden @ weight.T, targets, 0.7), [weight]
        )
    assert chunked[100] == chunked[4000]
    assert chunked[4000] <= 2 * hidden.numel() * 4  # the hidden states and the target ids, at most
    assert unchunked[4000] - unchunked[100] >= 4 * 4 * 64 * (4000 - 100)


# ---------------------------------------------------------------- the custom backward (_ChunkLogprob)
def _checkpointed_chunks(hidden, weight, bias, targets, temperature, chunk_size):
    """The implementation before _ChunkLogprob: each chunk under non-reentrant checkpoint, the
    backward replaying the forward (autocast included) and autograd's own backward of it."""

    def chunk(h, w, b, t):
        logprobs, entropy = sequence_logprobs_from_logits(F.linear(h, w, b)[None], t[None], temperature)
        return logprobs[0], entropy[0]

    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    outputs = [
        checkpoint(chunk, flat_hidden[i : i + chunk_size], weight, bias, flat_targets[i : i + chunk_size], use_reentrant=False)
        for i in range(0, flat_targets.numel(), chunk_size)
    ]
    return torch.cat([o[0] for o in outputs]).view_as(targets), torch.cat([o[1] for o in outputs]).view_as(targets)


def _head_leaves(with_bias: bool, vocab: int = 97, width: int = 16):
    """[3, 8, H] hidden states, a [V, H] weight and [V] bias (parameters, as a model has them),
    [3, 8] targets and a non-uniform upstream gradient; V = 97 matches no other dimension."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 8, width, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(vocab, width) * 0.5)
    bias = torch.nn.Parameter(torch.randn(vocab)) if with_bias else None
    return hidden, weight, bias, torch.randint(0, vocab, (3, 8)), torch.randn(3, 8)


def _grads_after_backward(fn, leaves, upstream):
    """``fn()``'s values, and the leaves' .grad after ``(logprobs * upstream).sum().backward()``."""
    for leaf in leaves:
        leaf.grad = None
    logprobs, entropy = fn()
    (logprobs * upstream).sum().backward()
    return logprobs.detach(), entropy, [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("chunk_size", [4, 5, 24])  # 4 divides B*T = 24, 5 does not, 24: one chunk
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunk_backward_matches_unchunked(temperature: float, with_bias: bool, chunk_size: int):
    """Values and the gradients of hidden, weight and bias equal autograd's through the unchunked
    float32 log-softmax, for a non-uniform upstream gradient."""
    hidden, weight, bias, targets, upstream = _head_leaves(with_bias)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    reference, reference_entropy, reference_grads = _grads_after_backward(
        lambda: sequence_logprobs_from_logits(F.linear(hidden, weight, bias), targets, temperature), leaves, upstream
    )
    logprobs, entropy, grads = _grads_after_backward(
        lambda: chunked_logprobs_from_hidden(hidden, weight, bias, targets, temperature, chunk_size), leaves, upstream
    )
    torch.testing.assert_close(logprobs, reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(entropy, reference_entropy, atol=1e-6, rtol=1e-5)
    for name, grad, reference_grad in zip(("hidden", "weight", "bias"), grads, reference_grads):
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad, reference_grad, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_chunk_backward_with_tied_weight_and_frozen_inputs():
    """The weight also embeds the input ids (tied embeddings): its gradient sums both uses. And a
    frozen weight or detached hidden states get no gradient while the other input still does."""
    _, weight, bias, targets, upstream = _head_leaves(with_bias=True)
    proj = torch.nn.Parameter(torch.randn(16, 16) * 0.3)
    ids = torch.randint(0, 97, (3, 8))
    leaves = [weight, bias, proj]

    def run(head):
        hidden = torch.tanh(F.embedding(ids, weight) @ proj)  # [3, 8, H], through the same weight
        return head(hidden)

    expected = _grads_after_backward(
        lambda: run(lambda h: sequence_logprobs_from_logits(F.linear(h, weight, bias), targets, 0.7)), leaves, upstream
    )
    actual = _grads_after_backward(
        lambda: run(lambda h: chunked_logprobs_from_hidden(h, weight, bias, targets, 0.7, chunk_size=5)), leaves, upstream
    )
    torch.testing.assert_close(actual[0], expected[0], atol=1e-6, rtol=1e-5)
    for grad, reference_grad in zip(actual[2], expected[2]):
        torch.testing.assert_close(grad, reference_grad, atol=1e-5, rtol=1e-5)

    hidden = torch.randn(3, 8, 16, requires_grad=True)
    frozen = weight.detach()
    (chunked_logprobs_from_hidden(hidden, frozen, None, targets, 0.7, 5)[0] * upstream).sum().backward()
    (reference_grad,) = torch.autograd.grad(
        (sequence_logprobs_from_logits(F.linear(hidden, frozen), targets, 0.7)[0] * upstream).sum(), [hidden]
    )
    torch.testing.assert_close(hidden.grad, reference_grad, atol=1e-5, rtol=1e-5)
    weight.grad = None
    (chunked_logprobs_from_hidden(hidden.detach(), weight, None, targets, 0.7, 5)[0] * upstream).sum().backward()
    (reference_grad,) = torch.autograd.grad(
        (sequence_logprobs_from_logits(F.linear(hidden.detach(), weight), targets, 0.7)[0] * upstream).sum(), [weight]
    )
    torch.testing.assert_close(weight.grad, reference_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backward_in_autocast", [False, True])  # Lightning: outside
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunk_backward_under_bf16_autocast_matches_checkpointed(
    temperature: float, with_bias: bool, backward_in_autocast: bool
):
    """Under bf16 autocast over float32 parameters (Lightning's bf16-mixed) the head runs in bf16
    in the forward and in the backward's recomputation, as the checkpointed implementation did:
    equal values, equal hidden-state gradients, float32 gradients for float32 inputs. The weight's
    and bias's gradients differ within bf16 rounding (measured 0.7% of scale): the checkpointed
    path summed the chunks' bf16 gradients in bf16 (autocast's cached cast of the weight is one
    autograd node), this one sums them in float32."""
    hidden, weight, bias, targets, upstream = _head_leaves(with_bias, vocab=500, width=64)
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    results = []
    for implementation in (_checkpointed_chunks, chunked_logprobs_from_hidden):
        for leaf in leaves:
            leaf.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logprobs, entropy = implementation(hidden, weight, bias, targets, temperature, 7)
            if backward_in_autocast:
                (logprobs * upstream).sum().backward()
        if not backward_in_autocast:
            (logprobs * upstream).sum().backward()
        results.append((logprobs.detach(), entropy, [leaf.grad for leaf in leaves]))
    (reference, reference_entropy, reference_grads), (logprobs, entropy, grads) = results
    assert logprobs.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logprobs, reference, **TOL)
    torch.testing.assert_close(entropy, reference_entropy, **TOL)
    for name, grad, reference_grad in zip(("hidden", "weight", "bias"), grads, reference_grads):
        assert grad.dtype == torch.float32, name
        _assert_close_to_scale(grad, reference_grad, 1e-6 if name == "hidden" else 2e-2, name)


def test_chunk_backward_twice_through_a_retained_graph():
    """The chunks share their backward buffers, freed after the last chunk's backward: a second
    backward through the retained graph gives the same gradients."""
    hidden, weight, bias, targets, upstream = _head_leaves(with_bias=True)
    logprobs, _ = chunked_logprobs_from_hidden(hidden, weight, bias, targets, 0.7, chunk_size=5)
    first = torch.autograd.grad((logprobs * upstream).sum(), [hidden, weight, bias], retain_graph=True)
    second = torch.autograd.grad((logprobs * upstream).sum(), [hidden, weight, bias])
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("autocast", [False, True])
def test_chunk_backward_saves_no_vocabulary_sized_tensor(autocast: bool):
    """Every tensor saved for backward that has a V-sized dimension is the weight or the bias
    itself (no [c, V] logits or log-softmax, no bf16 copy of the weight)."""
    hidden, weight, bias, targets, _ = _head_leaves(with_bias=True)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logprobs, _ = chunked_logprobs_from_hidden(hidden, weight, bias, targets, 0.7, chunk_size=5)
    assert len(saved) >= 5 * 3  # hidden, weight, bias, targets per chunk (5 chunks)
    vocabulary_sized = [t for t in saved if 97 in t.shape]
    assert vocabulary_sized and all(t is weight or t is bias for t in vocabulary_sized)
    logprobs.sum().backward()  # and the saved inputs suffice for the backward
    assert weight.grad is not None and bias.grad is not None and hidden.grad is not None


# ---------------------------------------------------------------- completion_logprobs on real models
PROMPTS, COMPLETIONS = [4, 9, 1, 6], [7, 3, 7, 1]  # left pads 0/5/8/3, right pads 0/4/0/6


def _check_chunked_equals_unchunked(model, chunk_sizes: tuple[int, ...], dtype: torch.dtype) -> None:
    model = model.to(dtype)
    batch = _batch(model.config.vocab_size, PROMPTS, COMPLETIONS)
    reference, reference_entropy, reference_grads = _logprobs_and_grads(model, *batch, chunk_size=None)
    # float64 shows that only rounding differs; float32 is what trains (measured: <= 1.1e-5 of scale)
    values, grads_relative = (dict(atol=1e-12, rtol=1e-12), 1e-12) if dtype == torch.float64 else (TOL, 2e-5)
    for chunk_size in chunk_sizes:
        logprobs, entropy, grads = _logprobs_and_grads(model, *batch, chunk_size=chunk_size)
        torch.testing.assert_close(logprobs, reference, **values)
        torch.testing.assert_close(entropy, reference_entropy, **values)
        for name, grad in grads.items():
            _assert_close_to_scale(grad, reference_grads[name], grads_relative, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_embedded_policy_chunked_equals_unchunked(dtype: torch.dtype):
    _check_chunked_equals_unchunked(load_policy(EMBEDDED_POLICY).train(), (3, 1024), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tie", [True, False])
def test_smollm2_shaped_chunked_equals_unchunked(tie: bool, dtype: torch.dtype):
    model = _smollm2_shaped(tie=tie)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    _check_chunked_equals_unchunked(model, (5,), dtype)


def test_bf16_autocast_returns_float32_close_to_unchunked():
    """Under bf16 autocast the head runs in bf16 in both paths and the log-softmax in float32; the
    recomputation in the backward replays autocast, so the gradients agree too: exactly for the
    decoder, within bf16 rounding (measured 0.37% of scale) for the output weight, whose unchunked
    gradient is one bf16 matmul over all tokens and whose chunked one sums per-chunk bf16 matmuls."""
    model = _smollm2_shaped()
    batch = _batch(model.config.vocab_size, PROMPTS, COMPLETIONS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference, _, reference_grads = _logprobs_and_grads(model, *batch, chunk_size=None)
        logprobs, _, grads = _logprobs_and_grads(model, *batch, chunk_size=5)
    assert logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs, reference, **TOL)
    for name, grad in grads.items():
        _assert_close_to_scale(grad, reference_grads[name], 1e-2 if name == "model.embed_tokens.weight" else 1e-6, name)


def test_saved_bytes_do_not_grow_with_the_vocabulary():
    """Two models that differ only in vocabulary size (49,152 = SmolLM2's, and 4,096): with chunks
    the bytes kept for backward are equal; without, they differ by at least 4*B*C*dV (the float32
    log-softmax), which shows the measurement would catch a [B, C, V] tensor."""
    batch = _batch(4096, [8, 8], [40, 40])
    chunked, unchunked = {}, {}
    for vocab in (4096, 49152):
        model = _smollm2_shaped(vocab_size=vocab)
        for chunk_size, saved in ((16, chunked), (None, unchunked)):
            saved[vocab], _ = _saved_bytes(
                lambda: completion_logprobs(model, *batch, 0.7, chunk_size=chunk_size), model.parameters()
            )
    assert chunked[4096] == chunked[49152]
    assert unchunked[49152] - unchunked[4096] >= 4 * 2 * 40 * (49152 - 4096)


# ---------------------------------------------------------------- models the chunked path refuses
def test_refuses_logit_softcapping_and_unchunked_still_works():
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, final_logit_softcapping=30.0,
    )
    model = Gemma2ForCausalLM(config)
    batch = _batch(64, [3, 2], [2, 3])
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        completion_logprobs(model, *batch)
    logprobs, _ = completion_logprobs(model, *batch, chunk_size=None)
    assert logprobs.shape == (2, 3)


def test_refuses_a_head_that_is_not_linear():
    model = _smollm2_shaped(vocab_size=64, tie=False)
    model.lm_head = torch.nn.Sequential(model.lm_head)
    with pytest.raises(ValueError, match="nn.Linear output head"):
        completion_logprobs(model, *_batch(64, [3], [2]))


# ---------------------------------------------------------------- shared prompts
def _grouped_batch(vocab_size: int):
    """Three prompts (lengths 5, 2, 7: left padding differs) with 3, 1 and 2 completions of
    different lengths, rows interleaved as a shuffled micro-batch holds them."""
    input_ids, attention_mask, _ = _batch(vocab_size, [5, 2, 7], [1, 1, 1])
    prompts = input_ids[:, :7], attention_mask[:, :7]
    rows = [0, 2, 0, 1, 2, 0]  # the prompt of each row
    completion_lengths = [4, 6, 1, 3, 5, 2]
    generator = torch.Generator().manual_seed(2)
    completions = torch.zeros((len(rows), 6), dtype=torch.long)
    completion_mask = torch.zeros_like(completions)
    for row, length in enumerate(completion_lengths):
        completions[row, :length] = torch.randint(1, vocab_size, (length,), generator=generator)
        completion_mask[row, :length] = 1
    ids = torch.cat([prompts[0][rows], completions], dim=1)
    mask = torch.cat([prompts[1][rows], completion_mask], dim=1)
    return ids, mask, completions


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("model_name", ["embedded", "smollm2_shaped"])
def test_shared_prompts_equal_one_forward_per_row(model_name: str, dtype: torch.dtype):
    """Each distinct prompt run once, its KV cache indexed out to its rows: the same logprobs,
    entropy and gradients as a forward of every whole row. In float64 the values agree to 1e-12;
    the gradients to float32 rounding (measured 3.5e-7 of scale), because Llama's RMSNorm computes
    in float32 and the shared path sums a prompt's row gradients before that cast, not after."""
    model = (load_policy(EMBEDDED_POLICY).train() if model_name == "embedded" else _smollm2_shaped()).to(dtype)
    batch = _grouped_batch(model.config.vocab_size)
    mask = batch[1][:, 7:].bool()
    reference, reference_entropy, reference_grads = _logprobs_and_grads(model, *batch, chunk_size=5)
    logprobs, entropy, grads = _logprobs_and_grads(model, *batch, chunk_size=5, share_prompts=True)
    values, grads_relative = (dict(atol=1e-12, rtol=1e-12), 2e-6) if dtype == torch.float64 else (TOL, 2e-5)
    torch.testing.assert_close(logprobs[mask], reference[mask], **values)
    torch.testing.assert_close(entropy[mask], reference_entropy[mask], **values)
    for name, grad in grads.items():
        _assert_close_to_scale(grad, reference_grads[name], grads_relative, name)


def test_shared_prompts_run_each_distinct_prompt_once():
    """The decoder sees 3 prompt rows (not 6) and then the 6 completions: fewer positions."""
    model = _smollm2_shaped()
    ids, mask, completions = _grouped_batch(model.config.vocab_size)
    shapes = []
    model.get_decoder().register_forward_hook(lambda module, args, output: shapes.append(tuple(output[0].shape[:2])))
    completion_logprobs(model, ids, mask, completions, 0.7, share_prompts=True)
    assert shapes == [(3, 7), (6, 6)]
    shapes.clear()
    completion_logprobs(model, ids[[0, 1]], mask[[0, 1]], completions[[0, 1]], 0.7, share_prompts=True)
    assert shapes == [(2, 13)]  # no prompt shared: one forward of whole rows
