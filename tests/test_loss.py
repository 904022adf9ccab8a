import math

import pytest
import torch
from torch.testing import assert_close

from sorl.loss import GRPOLoss, group_advantages, sequence_logprobs_from_logits

TIGHT = dict(rtol=1e-6, atol=1e-6)


def _t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


# ---------------------------------------------------------------- GRPOLoss: hand values
# Length-1 batch, eps=0.2, A=+1 for both sequences:
#   seq0: logp-old = 0.5 -> ratio = e^0.5 = 1.6487213 > 1.2, A>0 -> clipped term 1.2 is smaller,
#         loss = -1.2
#   seq1: logp-old = 0.1 -> ratio = e^0.1 = 1.1051709 in [0.8, 1.2] -> loss = -1.1051709
# token_mean           = (-1.2 - 1.1051709) / 2           = -1.1525855
# seq_mean_token_mean  = same (one token per sequence)     = -1.1525855
# seq_mean_token_sum_norm, L=4: (-1.2/4 - 1.1051709/4) / 2 = -0.2881464
LEN1 = dict(logp=[[0.5], [0.1]], adv=[1.0, 1.0], mask=[[1], [1]])

# Length-3 batch, eps=0.2:
#   seq0, A=+1, mask [1,1,1], logp-old = [0.5, 0.1, 0.0]
#     ratios [1.6487213 (clipped to 1.2), 1.1051709, 1.0] -> l = [-1.2, -1.1051709, -1.0], sum -3.3051709
#   seq1, A=-1, mask [1,1,0], logp-old = [-0.5, 0.2, masked]
#     ratio e^-0.5 = 0.6065307 < 0.8, A<0: min(-0.6065307, -0.8) = -0.8 -> l = 0.8 (clipped)
#     ratio e^0.2 = 1.2214028 > 1.2 but A<0: min(-1.2214028, -1.2) = -1.2214028 -> l = 1.2214028
#     sum 2.0214028
# token_mean           = (-3.3051709 + 2.0214028) / 5          = -0.2567536
# seq_mean_token_mean  = (-3.3051709/3 + 2.0214028/2) / 2      = -0.0455111
# seq_mean_token_sum_norm, L=4: (-3.3051709 + 2.0214028) / 4 / 2 = -0.1604710
LEN3 = dict(logp=[[0.5, 0.1, 0.0], [-0.5, 0.2, 0.0]], adv=[1.0, -1.0], mask=[[1, 1, 1], [1, 1, 0]])


@pytest.mark.parametrize(
    "case,aggregation,expected",
    [
        (LEN1, "token_mean", -1.1525855),
        (LEN1, "seq_mean_token_mean", -1.1525855),
        (LEN1, "seq_mean_token_sum_norm", -0.2881464),
        (LEN3, "token_mean", -0.2567536),
        (LEN3, "seq_mean_token_mean", -0.0455111),
        (LEN3, "seq_mean_token_sum_norm", -0.1604710),
    ],
)
def test_aggregation_hand_values(case, aggregation, expected):
    loss_fn = GRPOLoss(aggregation=aggregation, max_completion_length=4)
    logp = _t(case["logp"])
    loss, _ = loss_fn(logp, torch.zeros_like(logp), _t(case["adv"]), torch.tensor(case["mask"]))
    assert_close(loss, _t(expected), rtol=0, atol=1e-7)


def test_single_token_clipping_and_gradient():
    loss_fn = GRPOLoss()
    # Unclipped, A=+1: ratio = e^0.1 = 1.1051709, loss = -ratio, dloss/dlogp = -ratio.
    logp = _t([[0.1]], grad=True)
    loss, _ = loss_fn(logp, _t([[0.0]]), _t([1.0]), torch.tensor([[True]]))
    loss.backward()
    assert_close(loss, _t(-1.1051709), rtol=0, atol=1e-7)
    assert_close(logp.grad, _t([[-1.1051709]]), rtol=0, atol=1e-7)
    # Clipped, A=-1: ratio = e^-0.5 = 0.6065307 < 0.8 -> loss = 0.8, constant -> zero gradient.
    logp = _t([[-0.5]], grad=True)
    loss, stats = loss_fn(logp, _t([[0.0]]), _t([-1.0]), torch.tensor([[True]]))
    loss.backward()
    assert_close(loss, _t(0.8), **TIGHT)
    assert_close(logp.grad, _t([[0.0]]))
    assert stats["clip_frac"].item() == 1.0


def test_clip_higher_asymmetric():
    # ratio e^0.2 = 1.2214028, A=+1: clipped to 1.2 with eps_high=0.2, unclipped with eps_high=0.28.
    args = (_t([[0.2]]), _t([[0.0]]), _t([1.0]), torch.tensor([[True]]))
    assert_close(GRPOLoss(eps_high=0.2)(*args)[0], _t(-1.2), **TIGHT)
    assert_close(GRPOLoss(eps_high=0.28)(*args)[0], _t(-1.2214028), rtol=0, atol=1e-7)


def test_diagnostics_hand_values():
    # LEN3 batch: clipped = seq0 tok0 (1.6487 > 1.2, A>0) and seq1 tok0 (0.6065 < 0.8, A<0);
    # seq1 tok1 (1.2214 > 1.2 but A<0) is not clipped -> clip_frac = 2/5 = 0.4.
    # ratio_mean = (1.6487213 + 1.1051709 + 1 + 0.6065307 + 1.2214028) / 5 = 1.1163651
    logp = _t(LEN3["logp"])
    entropy = _t([[1.0, 2.0, 3.0], [4.0, 5.0, 1e9]])  # masked 1e9 must not count: (1+2+3+4+5)/5 = 3
    _, stats = GRPOLoss()(logp, torch.zeros_like(logp), _t(LEN3["adv"]), torch.tensor(LEN3["mask"]), entropy=entropy)
    assert_close(stats["clip_frac"], _t(0.4), **TIGHT)
    assert_close(stats["ratio_mean"], _t(1.1163651), rtol=0, atol=1e-7)
    assert_close(stats["ratio_max"], _t(math.exp(0.5)), **TIGHT)
    assert_close(stats["ratio_min"], _t(math.exp(-0.5)), **TIGHT)
    assert_close(stats["entropy"], _t(3.0), **TIGHT)
    assert stats["num_tokens"].item() == 5
    assert "kl" not in stats
    assert all(not v.requires_grad for v in stats.values())


# ---------------------------------------------------------------- KL
def test_k3_kl_hand_value():
    # logp = old -> ratio 1; A = 0 -> pg = 0. d = ref - logp:
    #   tok0 d = +0.5: e^0.5 - 0.5 - 1 = 0.1487213
    #   tok1 d = -0.3: e^-0.3 + 0.3 - 1 = 0.0408182
    # mean kl = 0.0947697; loss = beta * mean = 0.1 * 0.0947697 = 0.0094770
    logp = _t([[-1.0, -2.0]])
    ref = _t([[-0.5, -2.3]])
    loss, stats = GRPOLoss(beta=0.1)(logp, logp.clone(), _t([0.0]), torch.ones(1, 2), ref_logprobs=ref)
    assert_close(loss, _t(0.0094770), rtol=0, atol=1e-7)
    assert_close(stats["kl"], _t(0.0947697), rtol=0, atol=1e-7)


def test_beta_without_ref_raises():
    logp = _t([[0.0]])
    with pytest.raises(ValueError, match="ref_logprobs"):
        GRPOLoss(beta=0.1)(logp, logp, _t([1.0]), torch.ones(1, 1))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(aggregation="seq_mean_token_sum_norm"),
        dict(aggregation="bogus"),
        dict(eps_low=-0.1),
        dict(eps_low=1.0),
        dict(eps_high=-0.1),
        dict(beta=-1.0),
    ],
)
def test_invalid_init_raises(kwargs):
    with pytest.raises(ValueError):
        GRPOLoss(**kwargs)


def test_advantages_shape_checked():
    logp = _t([[0.0, 0.0]])
    with pytest.raises(ValueError, match="advantages"):
        GRPOLoss()(logp, logp, _t([[1.0]]), torch.ones(1, 2))


# ---------------------------------------------------------------- accumulation / masking
def _random_batch(seed=0, B=4, T=6):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 2)
    old = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3  # some tokens clip
    ref = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4, 1])[:B]
    mask = torch.arange(T)[None] < lengths[:, None]
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_gradient_accumulation_invariance(aggregation):
    logp, old, ref, adv, mask = _random_batch()
    loss_fn = GRPOLoss(beta=0.05, aggregation=aggregation, max_completion_length=6)

    full = logp.clone().requires_grad_()
    loss_full, _ = loss_fn(full, old, adv, mask, ref_logprobs=ref)
    loss_full.backward()

    # Micro-batches hold 8 and 5 tokens: dividing each by its own count would not sum to the full loss.
    norm = mask.sum() if aggregation == "token_mean" else (mask.sum(-1) > 0).sum()
    micro = logp.clone().requires_grad_()
    total = 0.0
    for sl in (slice(0, 2), slice(2, 4)):
        loss, _ = loss_fn(micro[sl], old[sl], adv[sl], mask[sl], ref_logprobs=ref[sl], normalizer=norm)
        loss.backward()
        total = total + loss.detach()
    assert_close(total, loss_full.detach(), rtol=1e-12, atol=1e-12)
    assert_close(micro.grad, full.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_garbage_in_masked_positions_has_no_effect(aggregation):
    logp, old, ref, adv, mask = _random_batch(seed=1)
    loss_fn = GRPOLoss(beta=0.1, aggregation=aggregation, max_completion_length=6)

    clean = logp.clone().requires_grad_()
    loss_clean, stats_clean = loss_fn(clean, old, adv, mask, ref_logprobs=ref)
    loss_clean.backward()

    garbage = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=torch.float64)
    fill = garbage[torch.arange(mask.numel()) % 4].view_as(mask)
    dirty = torch.where(mask, logp, fill).requires_grad_()
    loss_dirty, stats_dirty = loss_fn(
        dirty, torch.where(mask, old, fill.flip(0)), adv, mask, ref_logprobs=torch.where(mask, ref, fill.flip(1))
    )
    loss_dirty.backward()

    assert torch.isfinite(loss_dirty)
    assert_close(loss_dirty, loss_clean, rtol=0, atol=0)
    assert_close(dirty.grad, clean.grad, rtol=0, atol=0)
    assert torch.all(dirty.grad[~mask] == 0)
    for k in stats_clean:
        assert_close(stats_dirty[k], stats_clean[k], rtol=0, atol=0)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_all_masked_batch(aggregation):
    logp = torch.full((2, 3), float("nan"), dtype=torch.float64, requires_grad=True)
    ref = torch.full((2, 3), float("inf"), dtype=torch.float64)
    entropy = torch.full((2, 3), float("nan"), dtype=torch.float64)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss_fn = GRPOLoss(beta=0.1, aggregation=aggregation, max_completion_length=3)
    loss, stats = loss_fn(logp, logp.detach(), _t([1.0, -1.0]), mask, ref_logprobs=ref, entropy=entropy)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(logp.grad == 0)
    assert all(torch.isfinite(v).all() for v in stats.values())
    assert stats["num_tokens"].item() == 0


def test_empty_sequence_not_counted_in_seq_mean():
    # seq0: one token, ratio 1, A=+1 -> l = -1; seq1 has no tokens.
    # Default normalizer counts 1 sequence -> loss = -1 (not -1/2).
    logp = _t([[0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[True, False], [False, False]])
    loss, _ = GRPOLoss(aggregation="seq_mean_token_mean")(logp, logp, _t([1.0, 1.0]), mask)
    assert_close(loss, _t(-1.0), **TIGHT)


# ---------------------------------------------------------------- group_advantages
def test_group_advantages_equal_rewards_exactly_zero():
    # float32 mean of [0.9, 0.9, 0.9] is 0.9 - 6e-8, so a naive (r - mean) / (0 + eps) gives 6e-4.
    rewards = torch.tensor([0.9, 0.9, 0.9, 1.0, 0.0])
    adv, zero_std = group_advantages(rewards, torch.tensor([0, 0, 0, 1, 1]))
    assert torch.equal(adv[:3], torch.zeros(3))
    assert zero_std.tolist() == [True, True, True, False, False]


def test_group_advantages_single_sample_groups():
    adv, zero_std = group_advantages(torch.tensor([3.0, 5.0]), torch.tensor([0, 1]))
    assert torch.equal(adv, torch.zeros(2))
    assert zero_std.tolist() == [True, True]


@pytest.mark.parametrize("eps", [1e-4, 0.0])
def test_group_advantages_near_zero_std_nan_free(eps):
    for dtype in (torch.float32, torch.float64):
        # float32: the two rewards round equal; float64: std ~7e-13, far below eps.
        adv, _ = group_advantages(torch.tensor([1.0, 1.0 + 1e-12], dtype=dtype), torch.tensor([0, 0]), eps=eps)
        assert torch.isfinite(adv).all()
    # Tiny subnormal spread: its square underflows, so std == 0 while r - mean != 0.
    tiny = torch.tensor([0.0, 5e-324], dtype=torch.float64)
    adv, zero_std = group_advantages(tiny, torch.tensor([0, 0]), eps=0.0)
    assert torch.isfinite(adv).all() and zero_std.all()


def test_group_advantages_known_values():
    # Group [1, 0, 0, 1]: mean 0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.5773503,
    # A = +-0.5 / (0.5773503 + 1e-4) = +-0.8658754.
    adv, zero_std = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long))
    assert_close(adv, torch.tensor([0.8658754, -0.8658754, -0.8658754, 0.8658754]), rtol=0, atol=1e-6)
    assert not zero_std.any()


def test_group_advantages_no_std_scaling():
    # [1, 0, 0, 1] -> r - 0.5; [2, 4] -> r - 3.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 4.0])
    adv, _ = group_advantages(rewards, torch.tensor([0, 0, 0, 0, 1, 1]), scale_by_std=False)
    assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, -1.0, 1.0]), **TIGHT)


def test_group_advantages_non_contiguous_ids():
    # id 7: [1, 3] mean 2, std sqrt(2) = 1.4142136 -> A = -+1 / 1.4143136 = -+0.7070568
    # id 3: [2, 6] mean 4, std sqrt(8) = 2.8284271 -> A = -+2 / 2.8285271 = -+0.7070818
    # id 100: single sample -> 0
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 5.0])
    adv, zero_std = group_advantages(rewards, torch.tensor([7, 3, 7, 3, 100]))
    assert_close(adv, torch.tensor([-0.7070568, -0.7070818, 0.7070568, 0.7070818, 0.0]), rtol=0, atol=1e-6)
    assert zero_std.tolist() == [False, False, False, False, True]


# ---------------------------------------------------------------- sequence_logprobs_from_logits
def test_sequence_logprobs_match_manual():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 5, (2, 3), generator=g)
    logprobs, entropy = sequence_logprobs_from_logits(logits, targets, temperature=0.7)
    ref_all = torch.log_softmax(logits.detach().float() / 0.7, dim=-1)
    assert logprobs.dtype == torch.float32 and entropy.dtype == torch.float32
    assert_close(logprobs.detach(), ref_all.gather(-1, targets[..., None]).squeeze(-1), **TIGHT)
    assert_close(entropy, -(ref_all.exp() * ref_all).sum(-1), **TIGHT)
    assert logprobs.requires_grad and not entropy.requires_grad


def test_sequence_logprobs_temperature_hand_value():
    # logits [2, 0] / T=2 -> [1, 0]; log p(0) = -log(1 + e^-1) = -0.3132617
    logprobs, _ = sequence_logprobs_from_logits(torch.tensor([[[2.0, 0.0]]]), torch.tensor([[0]]), temperature=2.0)
    assert_close(logprobs, torch.tensor([[-0.3132617]]), rtol=0, atol=1e-6)


def test_sequence_entropy_uniform_is_log_v():
    # Constant logits over V=8 -> uniform: entropy = log 8 = 2.0794415, log p = -2.0794415.
    logits = torch.full((2, 3, 8), 3.7)
    logprobs, entropy = sequence_logprobs_from_logits(logits, torch.zeros(2, 3, dtype=torch.long), temperature=1.5)
    assert_close(entropy, torch.full((2, 3), 2.0794415), rtol=0, atol=1e-6)
    assert_close(logprobs, torch.full((2, 3), -2.0794415), rtol=0, atol=1e-6)


def test_sequence_logprobs_bad_temperature_raises():
    with pytest.raises(ValueError):
        sequence_logprobs_from_logits(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), temperature=0.0)
