"""A round's data and its phases, as plain functions (no Lightning).

One round: sample k responses per question and verify them (:func:`sample_responses`); turn them
into (question, response, label) candidates for the critique cache (:func:`critique_candidates`);
sample m critiques per cached pair and reward each by whether its verdict matches the label
(:func:`sample_critiques`); then group-relative advantages per kind (:func:`assign_advantages`).
Rollout callbacks run between the phases (see :class:`~sorl.callbacks.RolloutCallback`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from sorl.budgets import TRUNCATION_MARKER
from sorl.engines.base import Completion, SamplingParams
from sorl.loss import group_advantages
from sorl.rewards import critique_reward, is_right
from sorl.sampler import Sampler
from sorl.tasks.base import CritiqueExample, Question, Task

Kind = Literal["response", "critique"]


@dataclass
class Sample:
    """One sampled completion with its reward; ``pair`` is the critiqued pair for critiques."""

    kind: Kind
    group: int  # samples of one group share a prompt: advantages are relative within it
    question: Question
    prompt_ids: list[int]
    completion: Completion
    reward: float = 0.0
    advantage: float = 0.0
    pair: CritiqueExample | None = None
    verdict: bool | None = None  # for critiques: True if it judges the response right


@dataclass
class Round:
    """Everything one round produced; rollout callbacks read and change it in place."""

    index: int
    questions: list[Question]
    responses: list[Sample] = field(default_factory=list)
    candidates: list[CritiqueExample] = field(default_factory=list)
    critique_pairs: list[CritiqueExample] = field(default_factory=list)
    critiques: list[Sample] = field(default_factory=list)
    zero_std_groups: set[int] = field(default_factory=set)  # groups whose rewards are all equal
    metrics: dict[str, float] = field(default_factory=dict)  # extra values to log, mean over ranks


@dataclass(frozen=True)
class RolloutContext:
    """What a round samples with; rollout callbacks get it too (denoising samples refinements)."""

    task: Task
    sampler: Sampler
    response_sampling: SamplingParams
    critique_sampling: SamplingParams
    rank: int
    engine_logprobs: bool = False  # ask the engine for the sampled tokens' logprobs (importance sampling)
    max_embedded_response_tokens: int | None = None  # longer responses are cut from the middle in critique prompts

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingParams, purpose: str, round_index: int) -> list[list[Completion]]:
        """``n`` completions of each prompt text, seeded per (purpose, round, rank)."""
        return self.sampler.generate(prompts, n, sampling, purpose, round_index, self.rank)


def check_sizes(mode: str, questions: int, responses: int, critiques: int, batch_size: int, passes: int) -> None:
    """Refuses round sizes that cannot train: advantages are relative within a group, so a group
    of one sample always gets advantage 0."""
    if mode not in ("g_rl", "c_rl", "gc_rl"):
        raise ValueError(f"mode must be g_rl, c_rl or gc_rl, got {mode!r}")
    for name, value in [("questions_per_round", questions), ("batch_size", batch_size), ("passes_per_round", passes)]:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if responses < 2:
        raise ValueError(
            f"responses_per_question must be >= 2, got {responses}: advantages are relative to "
            "the other responses to the same question, so a single response always gets advantage 0 "
            "(and no question can give both a right and a wrong response to critique)"
        )
    if mode != "g_rl" and critiques < 2:
        raise ValueError(
            f"critiques_per_response must be >= 2 in mode {mode}, got {critiques}: a critique's "
            "advantage is relative to the other critiques of the same response, so a single critique always "
            "gets advantage 0 (mode g_rl trains no critiques)"
        )


def sample_responses(context: RolloutContext, round_: Round, k: int) -> None:
    """First-order rollout: ``k`` verified responses per question; the group is the question's index."""
    task = context.task
    prompt_ids = context.sampler.encode([task.response_prompt(q) for q in round_.questions])
    sampling = replace(context.response_sampling, logprobs=context.engine_logprobs)
    completions = context.sampler.generate_ids(prompt_ids, k, sampling, "responses", round_.index, context.rank)
    for group, (question, group_completions) in enumerate(zip(round_.questions, completions)):
        for completion in group_completions:
            reward = task.verify(question, completion.text)
            round_.responses.append(Sample("response", group, question, prompt_ids[group], completion, reward))


def critique_candidates(responses: Sequence[Sample]) -> list[CritiqueExample]:
    """Each scored response as a (question, response, is_right) pair for the critique cache."""
    return [CritiqueExample(s.question, s.completion.text, is_right(s.reward)) for s in responses]


def sample_critiques(context: RolloutContext, round_: Round, m: int) -> None:
    """Second-order rollout: ``m`` critiques of each of ``round_.critique_pairs``, each rewarded 1
    when its verdict matches the pair's label. Critique groups are numbered after the questions'."""
    task = context.task
    pairs = round_.critique_pairs
    responses = [embedded_response(context, p.response) for p in pairs]
    round_.metrics["rollout/critique_responses_cut"] = float(sum(r != p.response for r, p in zip(responses, pairs)))
    prompt_ids = context.sampler.encode([task.critique_prompt(p.question, r) for p, r in zip(pairs, responses)])
    sampling = replace(context.critique_sampling, logprobs=context.engine_logprobs)
    completions = context.sampler.generate_ids(prompt_ids, m, sampling, "critiques", round_.index, context.rank)
    offset = len(round_.questions)
    for index, (pair, group_completions) in enumerate(zip(pairs, completions)):
        for completion in group_completions:
            verdict = task.parse_verdict(completion.text)
            reward = critique_reward(verdict, pair.is_right)
            sample = Sample("critique", offset + index, pair.question, prompt_ids[index], completion, reward, pair=pair, verdict=verdict)
            round_.critiques.append(sample)


def embedded_response(context: RolloutContext, response: str) -> str:
    """The response as a critique prompt embeds it: whole, or, above ``max_embedded_response_tokens``,
    its head and tail around :data:`~sorl.budgets.TRUNCATION_MARKER` (the tail holds the final
    answer the critique judges; the pair's label stays the verifier's verdict on the whole)."""
    limit = context.max_embedded_response_tokens
    if limit is None:
        return response
    tokenizer = context.sampler.tokenizer
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if len(ids) <= limit:
        return response
    # Head and tail are cut as token ids and decoded apart, so the marker stays readable text even
    # where the tokenizer cannot encode it (the embedded character policy).
    marker_tokens = len(tokenizer(TRUNCATION_MARKER, add_special_tokens=False)["input_ids"])
    kept = limit - marker_tokens
    if kept < 2:
        raise ValueError(f"max_embedded_response_tokens {limit} leaves no room around the {marker_tokens}-token marker")
    head, tail = ids[: (kept + 1) // 2], ids[len(ids) - kept // 2 :]
    return tokenizer.decode(head) + TRUNCATION_MARKER + tokenizer.decode(tail)


def assign_advantages(round_: Round, scale_by_std: bool) -> None:
    """Group-relative advantages per kind; records the groups whose rewards are all equal."""
    for kind, samples in (("response", round_.responses), ("critique", round_.critiques)):
        if not samples:
            continue
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        groups = torch.tensor([s.group for s in samples])
        advantages, zero_std = group_advantages(rewards, groups, scale_by_std=scale_by_std)
        for sample, advantage in zip(samples, advantages.tolist()):
            sample.advantage = advantage
        zero_std_groups = {g for g, z in zip(groups.tolist(), zero_std.tolist()) if z}
        round_.zero_std_groups |= zero_std_groups
        round_.metrics[f"rollout/frac_zero_std_{kind}"] = len(zero_std_groups) / len(set(groups.tolist()))


def right_share(pairs: Sequence[CritiqueExample]) -> float:
    """The share of pairs whose response is right."""
    return sum(p.is_right for p in pairs) / len(pairs)


def round_sums(round_: Round) -> dict[str, tuple[float, float]]:
    """The round's rollout statistics as ``tag -> (sum, count)``, so that ranks with different
    amounts of data reduce exactly; ``round_.metrics`` entries count once per rank (a mean)."""
    responses, critiques = round_.responses, round_.critiques
    completions = [s.completion for s in responses + critiques]
    sums = {
        "rollout/response_reward": (sum(s.reward for s in responses), len(responses)),
        "rollout/response_len": (sum(len(s.completion.token_ids) for s in responses), len(responses)),
        "rollout/truncated": (sum(c.finish_reason == "length" for c in completions), len(completions)),
    }
    if critiques:
        sums["rollout/critique_reward"] = (sum(s.reward for s in critiques), len(critiques))
        sums["rollout/critique_len"] = (sum(len(s.completion.token_ids) for s in critiques), len(critiques))
        sums["rollout/verdict_parse_failures"] = (sum(s.verdict is None for s in critiques), len(critiques))
        # a critic drifting to one verdict shows here long before evaluation (labels are balanced)
        sums["rollout/verdict_wrong_share"] = (sum(s.verdict is False for s in critiques), len(critiques))
    sums.update({name: (value, 1) for name, value in round_.metrics.items()})
    return sums
