"""Per-token logprobs, masking and the HF engine on a tiny random policy."""

import torch

from sorl.batching import collate
from sorl.rollout import Sample
from sorl.engines import Completion, HFEngine, SamplingParams
from sorl.loss import GRPOLoss
from sorl.policy import completion_logprobs, load_policy, load_tokenizer
from sorl.tasks import Question

QUESTION = Question("q", "1+2", "3")


def _sample(prompt: list[int], completion: list[int], advantage: float = 1.0) -> Sample:
    return Sample("response", 0, QUESTION, prompt, Completion(completion, "", "stop"), advantage=advantage)


def _batch_logprobs(model, samples):
    batch = collate(samples, pad_id=0, temperature=0.7, mask_truncated=False)
    logprobs, _ = completion_logprobs(
        model, batch["input_ids"], batch["attention_mask"], batch["completion_ids"], batch["temperature"]
    )
    return batch, logprobs


def test_logprobs_equal_under_left_padding(tiny_policy_dir):
    model = load_policy(tiny_policy_dir)
    target = _sample([5, 6, 7, 8], [9, 10, 1])
    reference = None
    for pad in (0, 3, 7):
        # A longer prompt in the same batch forces `pad` left pads on the target row.
        other = _sample([4] * (4 + pad), [11, 1])
        _, logprobs = _batch_logprobs(model, [target, other])
        if reference is None:
            reference = logprobs[0]
        torch.testing.assert_close(logprobs[0], reference, atol=1e-5, rtol=1e-5)


def test_garbage_after_eos_changes_neither_loss_nor_gradient(tiny_policy_dir):
    model = load_policy(tiny_policy_dir)
    loss_fn = GRPOLoss()

    def loss_and_grad(samples):
        model.zero_grad()
        batch, logprobs = _batch_logprobs(model, samples)
        loss, _ = loss_fn(logprobs, logprobs.detach() - 0.1, batch["advantages"], batch["completion_mask"])
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    clean = [_sample([5, 6], [9, 10, 1], 1.0), _sample([5, 7], [12, 13, 14, 15, 16, 1], -1.0)]
    loss_a, grads_a = loss_and_grad(clean)
    # Same first row, but the batch's padded tensor now carries garbage after that row's EOS.
    batch = collate(clean, pad_id=0, temperature=0.7, mask_truncated=False)
    batch["input_ids"][0, -3:] = torch.tensor([30, 31, 32])
    batch["completion_ids"][0, -3:] = torch.tensor([30, 31, 32])
    model.zero_grad()
    logprobs, _ = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_ids"], 0.7)
    loss_b, _ = loss_fn(logprobs, logprobs.detach() - 0.1, batch["advantages"], batch["completion_mask"])
    loss_b.backward()
    torch.testing.assert_close(loss_b.detach(), loss_a)
    for grad_a, param in zip(grads_a, model.parameters()):
        torch.testing.assert_close(param.grad, grad_a)


def test_completion_mask_follows_lengths_and_truncation():
    truncated = Sample("response", 0, QUESTION, [5], Completion([9, 10, 11], "", "length"))
    stopped = _sample([5, 6], [9, 1])
    kept = collate([truncated, stopped], pad_id=0, temperature=1.0, mask_truncated=False)
    assert kept["completion_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    masked = collate([truncated, stopped], pad_id=0, temperature=1.0, mask_truncated=True)
    assert masked["completion_mask"].tolist() == [[0, 0, 0], [1, 1, 0]]
    # prompts are left padded, completions right padded
    assert kept["input_ids"].tolist() == [[0, 5, 9, 10, 11], [5, 6, 9, 1, 0]]
    assert kept["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_hf_engine_seeded_sampling_and_finish_reasons(tiny_policy_dir):
    model, tokenizer = load_policy(tiny_policy_dir).train(), load_tokenizer(tiny_policy_dir)
    engine = HFEngine()
    engine.setup(model, tokenizer)
    prompts = [tokenizer("Q:1+2\nS:", add_special_tokens=False)["input_ids"], [5, 6]]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12)
    first = engine.generate(prompts, 3, sampling, seed=7)
    again = engine.generate(prompts, 3, sampling, seed=7)
    other = engine.generate(prompts, 3, sampling, seed=8)
    assert [[c.token_ids for c in g] for g in first] == [[c.token_ids for c in g] for g in again]
    assert [[c.token_ids for c in g] for g in first] != [[c.token_ids for c in g] for g in other]
    assert [len(g) for g in first] == [3, 3]
    for group in first:
        for completion in group:
            assert completion.finish_reason in ("stop", "length")
            if completion.finish_reason == "stop":
                assert completion.token_ids[-1] == tokenizer.eos_token_id
                assert tokenizer.eos_token_id not in completion.token_ids[:-1]
            else:
                assert len(completion.token_ids) == 12
            assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    assert model.training  # the engine restores the training mode it found


def test_hf_engine_greedy_matches_batched_and_single(tiny_policy_dir):
    model, tokenizer = load_policy(tiny_policy_dir), load_tokenizer(tiny_policy_dir)
    engine = HFEngine()
    engine.setup(model, tokenizer)
    greedy = SamplingParams(greedy=True, max_new_tokens=8)
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    batched = engine.generate(prompts, 1, greedy)
    single = [engine.generate([p], 1, greedy)[0] for p in prompts]
    assert [g[0].token_ids for g in batched] == [g[0].token_ids for g in single]


def test_policy_gradient_step_moves_logprobs_with_the_advantage(tiny_policy_dir):
    """One SGD step on the GRPO loss raises the positive-advantage completion and lowers the other."""
    from sorl.module import GCRLModule

    module = GCRLModule(model=tiny_policy_dir)
    module.configure_model()
    samples = [_sample([5, 6], [9, 10, 1], advantage=1.0), _sample([5, 6], [11, 12, 1], advantage=-1.0)]
    batch = collate(samples, pad_id=0, temperature=1.0, mask_truncated=False)
    batch["step_tokens"] = batch["completion_mask"].sum()
    batch["step_sequences"] = torch.tensor(2.0)
    module.log = lambda *args, **kwargs: None  # no Trainer attached
    before = module.completion_logprobs(batch)[0].sum(-1).detach()
    optimizer = torch.optim.SGD(module.policy.parameters(), lr=0.5)
    module.training_step(batch, 0).backward()
    optimizer.step()
    after = module.completion_logprobs(batch)[0].sum(-1).detach()
    assert after[0] > before[0] and after[1] < before[1]


def test_module_forward_per_kind_matches_one_padded_forward(tiny_policy_dir):
    """GCRLModule trims responses and critiques to their own padding: same logprobs and gradient."""
    from sorl.module import GCRLModule

    module = GCRLModule(model=tiny_policy_dir)
    module.configure_model()
    answers = [_sample([5, 6], [9, 10, 1]), _sample([7], [8, 1])]
    critiques = [
        Sample("critique", 1, QUESTION, [4] * 12 + [5, 6], Completion([12, 13, 14, 15, 16, 1], "", "stop"), advantage=-1.0),
        Sample("critique", 1, QUESTION, [3] * 9, Completion([12, 1], "", "stop"), advantage=0.5),
    ]
    batch = collate([answers[0], critiques[0], answers[1], critiques[1]], pad_id=0, temperature=0.7, mask_truncated=False)
    mask = batch["completion_mask"].bool()
    grouped, _ = module.completion_logprobs(batch)
    padded, _ = completion_logprobs(
        module.policy, batch["input_ids"], batch["attention_mask"], batch["completion_ids"], batch["temperature"]
    )
    torch.testing.assert_close(grouped[mask], padded[mask], atol=1e-5, rtol=1e-5)
    gradients = []
    for logprobs in (grouped, padded):
        module.policy.zero_grad()
        loss, _ = GRPOLoss()(logprobs, logprobs.detach(), batch["advantages"], batch["completion_mask"])
        loss.backward(retain_graph=True)
        gradients.append([p.grad.clone() for p in module.policy.parameters()])
    for a, b in zip(*gradients):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_module_length_buckets_match_one_forward_per_kind_in_fewer_positions(tiny_policy_dir):
    """Rows of similar completion length in their own forwards (length_buckets): the same logprobs
    and gradient as one forward per kind, with fewer positions run through the decoder."""
    from sorl.module import GCRLModule

    samples = []
    for group, (prompt, lengths) in enumerate([([5, 6, 7], [2, 3, 2]), ([8, 9], [3, 2, 2]), ([4] * 6, [100, 98, 101])]):
        for row, length in enumerate(lengths):
            completion = [10 + (group + row + t) % 20 for t in range(length - 1)] + [1]
            samples.append(_sample(prompt, completion, advantage=(-1.0) ** row))
    batch = collate(samples, pad_id=0, temperature=0.7, mask_truncated=False)
    mask = batch["completion_mask"].bool()
    results = {}
    for length_buckets in (1, 4):
        for share_prompts in (False, True):
            torch.manual_seed(0)
            module = GCRLModule(model=tiny_policy_dir, length_buckets=length_buckets, share_prompts=share_prompts)
            module.configure_model()
            positions = []
            hook = module.policy.get_decoder().register_forward_pre_hook(
                lambda m, args, kwargs: positions.append(kwargs["input_ids"].numel()), with_kwargs=True
            )
            logprobs, _ = module.completion_logprobs(batch)
            hook.remove()
            loss, _ = GRPOLoss()(logprobs, logprobs.detach(), batch["advantages"], batch["completion_mask"])
            loss.backward()
            results[length_buckets, share_prompts] = (logprobs, [p.grad for p in module.policy.parameters()], sum(positions))
    for share_prompts in (False, True):
        one, bucketed = results[1, share_prompts], results[4, share_prompts]
        torch.testing.assert_close(bucketed[0][mask], one[0][mask], atol=1e-5, rtol=1e-5)
        for a, b in zip(bucketed[1], one[1]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
        assert bucketed[2] < one[2]  # the short groups are no longer padded to 101 tokens
