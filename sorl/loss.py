"""GRPO-style policy-gradient loss, group-relative advantages and token log-probs (plain torch)."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def group_advantages(
    rewards: Tensor, group_ids: Tensor, scale_by_std: bool = True, eps: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """Group-relative advantages ``(r - mean_g) / (std_g + eps)`` (or ``r - mean_g``).

    ``std_g`` is the unbiased (Bessel) std, as ``torch.std`` and TRL use. Groups whose rewards
    are all equal (single-sample groups included) get advantage exactly 0. Group ids may be any
    longs, in any order.

    Args:
        rewards (Tensor): [N] rewards.
        group_ids (Tensor): [N] long group id of each sample.
        scale_by_std (bool): divide by the group std (Dr. GRPO sets this False).
        eps (float): added to the std to bound the advantage when the std is tiny.

    Returns:
        tuple[Tensor, Tensor]: [N] advantages and [N] bool, True where the sample's group has
        zero reward spread.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D shapes"
        )
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    _, inv = torch.unique(group_ids, return_inverse=True)  # [N] -> dense ids 0..G-1
    num_groups = int(inv.max()) + 1 if inv.numel() else 0
    zeros = rewards.new_zeros(num_groups)
    count = zeros.index_add(0, inv, torch.ones_like(rewards))  # [G]
    mean = zeros.index_add(0, inv, rewards) / count  # [G]
    centered = rewards - mean[inv]  # [N]
    var = zeros.index_add(0, inv, centered.square()) / (count - 1).clamp(min=1)
    std = var.sqrt()[inv]  # [N]
    # Exact equality via min == max: the float mean of equal values can be off by an ulp.
    gmax = zeros.scatter_reduce(0, inv, rewards, "amax", include_self=False)
    gmin = zeros.scatter_reduce(0, inv, rewards, "amin", include_self=False)
    zero_std = (gmax == gmin)[inv] | (std == 0)  # [N]
    if scale_by_std:
        # A safe denominator keeps the untaken branch finite (no NaN even with eps=0).
        centered = centered / torch.where(zero_std, torch.ones_like(std), std + eps)
    return torch.where(zero_std, torch.zeros_like(centered), centered), zero_std


class GRPOLoss(nn.Module):
    """Clipped policy-gradient loss (PPO/GRPO) with optional k3 KL penalty to a reference.

    Per token: ``-min(r*A, clip(r, 1-eps_low, 1+eps_high)*A) + beta*KL_k3`` with
    ``r = exp(logp - old_logp)``. Aggregations:

    - ``token_mean``: sum over tokens / normalizer (default: masked tokens in the batch).
    - ``seq_mean_token_mean``: per-sequence token mean, summed / normalizer.
    - ``seq_mean_token_sum_norm`` (Dr. GRPO): per-sequence token sum / ``max_completion_length``,
      summed / normalizer.

    ``normalizer`` is the count of the thing being averaged (tokens for ``token_mean``, sequences
    otherwise) that this batch's sum is divided by. It defaults to that count in this batch
    (sequences with at least one masked token, for the sequence modes). Pass the count for the
    whole optimizer step, across micro-batches and ranks, so that gradient accumulation and DDP
    do not change the result. A [B] normalizer divides each row's sum by its own count: that is
    how responses and critiques get their own means (the DataModule's ``critique_share``).

    Args:
        eps_low (float): lower clip range, ratio floor is ``1 - eps_low``.
        eps_high (float): upper clip range, ratio ceiling is ``1 + eps_high`` (DAPO clip-higher).
        beta (float): KL coefficient; ``ref_logprobs`` is required when > 0.
        aggregation (Aggregation): how token losses are reduced to a scalar.
        max_completion_length (int | None): constant divisor for ``seq_mean_token_sum_norm``.
        importance_sampling_cap (float | None): truncated importance sampling (TIS) for an engine
            whose logprobs differ from the trainer's (vLLM kernels, bf16): each token's loss is
            weighted by ``min(exp(old_logprobs - engine_logprobs), cap)``, detached. ``None``
            (default) turns it off; the DataModule needs engine_logprobs: true.
    """

    def __init__(
        self,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        beta: float = 0.0,
        aggregation: Aggregation = "token_mean",
        max_completion_length: int | None = None,
        importance_sampling_cap: float | None = None,
    ):
        super().__init__()
        if importance_sampling_cap is not None and importance_sampling_cap < 1.0:
            raise ValueError(f"importance_sampling_cap must be >= 1 (or None), got {importance_sampling_cap}")
        if not 0.0 <= eps_low < 1.0:
            raise ValueError(f"eps_low must be in [0, 1), got {eps_low}")
        if eps_high < 0.0:
            raise ValueError(f"eps_high must be >= 0, got {eps_high}")
        if beta < 0.0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if aggregation not in _AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
        if aggregation == "seq_mean_token_sum_norm" and (max_completion_length is None or max_completion_length <= 0):
            raise ValueError(
                f"seq_mean_token_sum_norm requires a positive max_completion_length, got {max_completion_length}"
            )
        self.eps_low, self.eps_high, self.beta = eps_low, eps_high, beta
        self.aggregation = aggregation
        self.max_completion_length = max_completion_length
        self.importance_sampling_cap = importance_sampling_cap

    def forward(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        ref_logprobs: Tensor | None = None,
        entropy: Tensor | None = None,
        normalizer: float | Tensor | None = None,
        engine_logprobs: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """
        Args:
            logprobs (Tensor): [B, T] log-probs of the taken tokens under the current policy.
            old_logprobs (Tensor): [B, T] log-probs under the sampling policy.
            advantages (Tensor): [B] one advantage per sequence.
            mask (Tensor): [B, T] bool or 0/1, True on completion tokens to train on.
            ref_logprobs (Tensor | None): [B, T] reference log-probs, required when beta > 0.
            entropy (Tensor | None): [B, T] per-token entropy, only reported.
            normalizer (float | Tensor | None): scalar or [B]; see the class docstring.
            engine_logprobs (Tensor | None): [B, T] log-probs the rollout engine gave the taken
                tokens; required when ``importance_sampling_cap`` is set.

        Returns:
            tuple[Tensor, dict[str, Tensor]]: scalar loss and detached diagnostics: ``clip_frac``,
            ``ratio_mean/max/min``, ``sampling_kl`` (KL from the sampling to the current policy),
            ``kl`` (to the reference, when given), ``is_ratio_mean/max``, ``entropy``, ``num_tokens``.
        """
        if advantages.shape != logprobs.shape[:1]:
            raise ValueError(f"advantages must be [B]={tuple(logprobs.shape[:1])}, got {tuple(advantages.shape)}")
        if self.beta > 0 and ref_logprobs is None:
            raise ValueError("ref_logprobs is required when beta > 0")
        if self.importance_sampling_cap is not None and engine_logprobs is None:
            raise ValueError("engine_logprobs is required when importance_sampling_cap is set")
        mask = mask.bool()
        zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
        # where() before exp: masked positions may hold inf/nan, and where's backward sends them
        # exactly zero gradient, whereas multiplying by the mask afterwards gives 0 * nan = nan.
        logp = torch.where(mask, logprobs, zero)  # [B, T]
        log_ratio = logp - torch.where(mask, old_logprobs, zero)
        ratio = torch.exp(log_ratio)  # [B, T]
        adv = advantages[:, None]  # [B, 1]
        pg = -torch.minimum(ratio * adv, ratio.clamp(1 - self.eps_low, 1 + self.eps_high) * adv)
        is_ratio = None
        if self.importance_sampling_cap is not None:
            # Tokens were sampled by the engine, not by old_logprobs' model: reweight, truncated.
            engine_gap = torch.where(mask, old_logprobs.detach() - engine_logprobs, zero)  # [B, T]
            is_ratio = torch.exp(engine_gap)
            pg = pg * is_ratio.clamp(max=self.importance_sampling_cap)
        per_token = pg
        kl = None
        if ref_logprobs is not None:
            d = torch.where(mask, ref_logprobs, zero) - logp  # [B, T]
            kl = torch.exp(d) - d - 1  # k3 estimator of KL(pi || ref), >= 0
            if self.beta > 0:
                per_token = pg + self.beta * kl
        per_token = torch.where(mask, per_token, zero)  # [B, T]

        tokens_per_seq = mask.sum(-1)  # [B]
        num_tokens = tokens_per_seq.sum()
        seq_sum = per_token.sum(-1)  # [B]
        if self.aggregation == "token_mean":
            seq_loss, total = seq_sum, per_token.sum()
            default_norm = num_tokens
        else:
            if self.aggregation == "seq_mean_token_mean":
                seq_loss = seq_sum / tokens_per_seq.clamp(min=1)
            else:
                seq_loss = seq_sum / self.max_completion_length
            total = seq_loss.sum()
            default_norm = (tokens_per_seq > 0).sum()
        if normalizer is None:  # clamp: an all-masked batch gives 0 / 1 = 0, still attached to the graph
            loss = total / default_norm.clamp(min=1)
        elif torch.is_tensor(normalizer) and normalizer.dim() == 1:  # per row: kinds weighted apart
            loss = (seq_loss / normalizer).sum()
        else:
            loss = total / normalizer

        with torch.no_grad():
            n = num_tokens.clamp(min=1)
            clipped = ((ratio < 1 - self.eps_low) & (adv < 0)) | ((ratio > 1 + self.eps_high) & (adv > 0))

            def masked_mean(x: Tensor) -> Tensor:
                return torch.where(mask, x, zero).sum() / n

            has_tokens = num_tokens > 0  # empty batches report 0 rather than +-inf
            stats = {
                "clip_frac": masked_mean(clipped.to(ratio.dtype)),
                "ratio_mean": masked_mean(ratio),
                "ratio_max": torch.where(has_tokens, ratio.masked_fill(~mask, -torch.inf).amax(), zero),
                "ratio_min": torch.where(has_tokens, ratio.masked_fill(~mask, torch.inf).amin(), zero),
                # k3 estimate of KL(sampling || current) on tokens drawn by the sampling policy:
                # how far the update has moved from the data, whatever beta is.
                "sampling_kl": masked_mean(ratio - 1 - log_ratio),
                "num_tokens": num_tokens,
            }
            if kl is not None:
                stats["kl"] = masked_mean(kl)
            if is_ratio is not None:  # before truncation, to show how far the engine drifts
                stats["is_ratio_mean"] = masked_mean(is_ratio)
                stats["is_ratio_max"] = torch.where(has_tokens, is_ratio.masked_fill(~mask, -torch.inf).amax(), zero)
            if entropy is not None:
                stats["entropy"] = masked_mean(entropy.to(ratio.dtype))
        return loss, stats


def sequence_logprobs_from_logits(
    logits: Tensor, target_ids: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Log-probs of ``target_ids`` under ``softmax(logits / temperature)``, and per-token entropy.

    Dividing by the sampling temperature makes the log-probs match those of the sampler. Math is
    in float32 whatever the input dtype. Memory: autograd keeps the [B, T, V] float32 log-softmax
    (4*B*T*V bytes) and the float32 copies around it make the peak several times that; the
    entropy is computed under ``no_grad`` so its [B, T, V] intermediates are freed at once. For
    long completions and large vocabularies use :func:`chunked_logprobs_from_hidden`.

    Args:
        logits (Tensor): [B, T, V] logits aligned with ``target_ids`` (already shifted).
        target_ids (Tensor): [B, T] long token ids.
        temperature (float): sampling temperature, > 0.

    Returns:
        tuple[Tensor, Tensor]: [B, T] float32 log-probs (with grad) and [B, T] entropy (no grad).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp_all = F.log_softmax(logits.float() / temperature, dim=-1)  # [B, T, V]
    logprobs = logp_all.gather(-1, target_ids.long().unsqueeze(-1)).squeeze(-1)  # [B, T]
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # [B, T]
    return logprobs, entropy


def chunked_logprobs_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target_ids: Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """:func:`sequence_logprobs_from_logits` of ``F.linear(hidden, weight, bias)``, a chunk of tokens at a time.

    The logits are never held for the whole batch: each chunk of ``chunk_size`` token positions
    goes through the output projection, float32 log-softmax (after the temperature), gather and
    entropy. When a gradient is needed each chunk is one autograd node (:class:`_ChunkLogprob`)
    that keeps only the chunk's inputs (a view of ``hidden``, the target ids, and ``weight`` and
    ``bias``, the parameters themselves); its backward recomputes the chunk's logits in the dtype
    the forward had (autocast's, when on) and their float32 log-softmax, and goes straight to the
    logits' gradient, without the entropy or gather's backward. Memory kept for backward is thus
    O(B*T*H) instead of 4*B*T*V bytes (the float32 log-softmax). The chunks reuse their float32
    [chunk_size, V] buffers (two in the forward, three in the backward, the latter freed after the
    last chunk's backward), so the transient peak is at most (12 + bytes of the logits' dtype)
    *chunk_size*V bytes. Values and gradients are those of the unchunked code up to float
    summation order (the matmuls', and the weight's gradient is a sum over chunks): the float32
    arithmetic on each logit is the same. The cost: one more output projection per chunk in the
    backward.

    Args:
        hidden (Tensor): [B, T, H] final hidden states aligned with ``target_ids`` (already shifted).
        weight (Tensor): [V, H] output projection (``lm_head.weight``; tied embeddings are fine).
        bias (Tensor | None): [V] output bias, if any.
        target_ids (Tensor): [B, T] long token ids.
        temperature (float): sampling temperature, > 0.
        chunk_size (int): token positions (over B*T, row-major) per chunk, >= 1.

    Returns:
        tuple[Tensor, Tensor]: [B, T] float32 log-probs (with grad) and [B, T] entropy (no grad).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    batch, length = target_ids.shape
    flat_hidden = hidden.reshape(batch * length, hidden.shape[-1])  # [N, H]
    flat_targets = target_ids.reshape(batch * length).long()  # [N]
    # The autograd node only where a gradient will be asked for; under no_grad (old/reference logprobs) run plainly.
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (flat_hidden, weight, bias)
    )
    starts = range(0, batch * length, chunk_size)
    rows = min(chunk_size, batch * length)
    forward_scratch = _Scratch(rows)  # freed when this returns
    backward_scratch = _Scratch(rows, uses=len(starts))  # allocated by the first chunk's backward, freed by the last's
    logprobs, entropy = [], []
    for start in starts:
        args = (flat_hidden[start : start + chunk_size], weight, bias, flat_targets[start : start + chunk_size], temperature)
        if needs_grad:
            chunk_logprobs, chunk_entropy = _ChunkLogprob.apply(*args, forward_scratch, backward_scratch)
        else:
            chunk_logprobs, chunk_entropy = _chunk_logprobs(*args, forward_scratch)
        logprobs.append(chunk_logprobs)  # [c]
        entropy.append(chunk_entropy)
    if not logprobs:  # no token at all
        empty = hidden.new_zeros((batch, length), dtype=torch.float32)
        return empty, empty.clone()
    return torch.cat(logprobs).view(batch, length), torch.cat(entropy).view(batch, length)


class _Scratch:
    """Float32 [rows, V] buffers that successive chunks reuse, each allocated on first use.

    On CPU a fresh [1024, 49152] float32 tensor costs about 55 ms of page faults, more than the
    elementwise pass that fills it (about 20 ms), so chunks share their [c, V] buffers instead.
    ``uses``: the number of chunks whose backward shares them; after the last one they are freed
    (until the next backward, if the graph is retained).
    """

    def __init__(self, rows: int, uses: int = 0):
        self.rows, self.uses, self.left = rows, uses, uses
        self.buffers: dict[int, Tensor] = {}

    def get(self, slot: int, like: Tensor) -> Tensor:
        """Buffer ``slot`` as a float32 view of the shape of ``like`` ([c, V], c <= rows)."""
        if slot not in self.buffers:
            self.buffers[slot] = like.new_empty((self.rows, like.shape[1]), dtype=torch.float32)
        return self.buffers[slot][: like.shape[0]]

    def used(self) -> None:
        """One chunk's backward is done."""
        self.left -= 1
        if self.left == 0:
            self.buffers.clear()
            self.left = self.uses


def _scaled_log_softmax(logits: Tensor, temperature: float, scratch: _Scratch) -> tuple[Tensor, Tensor]:
    """[c, V] float32 ``log_softmax(logits / temperature)``, bit for bit as
    :func:`sequence_logprobs_from_logits` computes it (in ``scratch`` slot 1), and the scaled
    logits (``logits`` itself when float32, else slot 0), which the caller may overwrite."""
    scaled = logits if logits.dtype == torch.float32 else scratch.get(0, logits).copy_(logits)  # [c, V]
    if temperature != 1.0:  # x / 1 == x: skip the pass
        scaled.div_(temperature)
    return torch.log_softmax(scaled, dim=-1, out=scratch.get(1, logits)), scaled


def _chunk_logprobs(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, target_ids: Tensor, temperature: float, scratch: _Scratch
) -> tuple[Tensor, Tensor]:
    """One chunk without autograd: [c, H] hidden states, [c] long targets -> [c] log-probs and [c] entropy."""
    with torch.no_grad():
        logits = F.linear(hidden, weight, bias)  # [c, V], in autocast's dtype when autocast is on
        return _logprobs_from_chunk_logits(logits, target_ids, temperature, scratch)


def _logprobs_from_chunk_logits(
    logits: Tensor, target_ids: Tensor, temperature: float, scratch: _Scratch
) -> tuple[Tensor, Tensor]:
    """[c, V] logits (overwritten when float32), [c] long targets -> [c] log-probs and [c]
    entropy, without autograd: the values of :func:`sequence_logprobs_from_logits` (the same
    float32 ops), in ``scratch``'s buffers."""
    logp, scaled = _scaled_log_softmax(logits, temperature, scratch)  # [c, V] float32
    logprobs = logp.gather(-1, target_ids[:, None]).squeeze(-1)  # [c]
    plogp = torch.exp(logp, out=scaled).mul_(logp)  # [c, V]
    return logprobs, -plogp.sum(-1)


class _ChunkLogprob(torch.autograd.Function):
    """One chunk's [c] log-probs and [c] entropy (not differentiable) from [c, H] hidden states.

    Saves only the inputs; the backward recomputes the logits and applies
    d logprob / d logits = (onehot(target) - softmax(logits / T)) / T times the upstream gradient.
    """

    @staticmethod
    def forward(
        ctx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target_ids: Tensor,
        temperature: float,
        forward_scratch: _Scratch,
        backward_scratch: _Scratch,
    ) -> tuple[Tensor, Tensor]:
        logits = F.linear(hidden, weight, bias)  # [c, V], in autocast's dtype when autocast is on
        # The backward casts to this dtype by hand, whatever autocast state it runs under
        # (Lightning calls backward outside autocast).
        ctx.logits_dtype, ctx.temperature, ctx.scratch = logits.dtype, temperature, backward_scratch
        ctx.save_for_backward(hidden, weight, bias, target_ids)
        logprobs, entropy = _logprobs_from_chunk_logits(logits, target_ids, temperature, forward_scratch)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs: Tensor, _grad_entropy: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, target_ids = ctx.saved_tensors
        dtype, temperature, scratch = ctx.logits_dtype, ctx.temperature, ctx.scratch
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        # Autocast off and explicit casts: the forward's matmul, in its dtype, with the same values.
        with torch.autocast(hidden.device.type, enabled=False):
            lowp_hidden, lowp_weight = hidden.to(dtype), weight.to(dtype)
            lowp_bias = None if bias is None else bias.to(dtype)
            logits = F.linear(lowp_hidden, lowp_weight, lowp_bias)  # [c, V]
            logp, scaled = _scaled_log_softmax(logits, temperature, scratch)  # [c, V] float32
            # gather's backward: the upstream gradient at the target, 0 elsewhere.
            onehot = scaled.zero_().scatter_(-1, target_ids[:, None], grad_logprobs.float()[:, None])  # [c, V]
            # The op autograd runs for log_softmax: its exp is not torch.exp's to the last ulp, and
            # this keeps the gradients bit for bit those of the unchunked path.
            dlogits = torch._log_softmax_backward_data(onehot, logp, -1, torch.float32, out=scratch.get(2, logits))
            if temperature != 1.0:
                dlogits.div_(temperature)  # the backward of / T
            if dtype != torch.float32:  # as the cast to float32 sends it back, into the logits' buffer
                dlogits = logits.copy_(dlogits)  # [c, V]
            grad_hidden = dlogits.mm(lowp_weight).to(hidden.dtype) if needs_hidden else None  # [c, H]
            grad_weight = dlogits.t().mm(lowp_hidden).to(weight.dtype) if needs_weight else None  # [V, H]
            grad_bias = dlogits.sum(0).to(bias.dtype) if needs_bias else None  # [V]
        scratch.used()
        return grad_hidden, grad_weight, grad_bias, None, None, None, None
