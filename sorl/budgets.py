"""Length budgets, checked before anything runs, and the rule for responses too long to embed.

A critique prompt holds the question's prompt and the whole response, so a critique sequence is
the longest thing a round trains on or samples: prompt + critique template + response + critique.
:func:`check_length_budgets` refuses a configuration whose sequences cannot fit the engine's
``max_model_len``, with the numbers, before any rollout is sampled. Responses longer than the
critique prompt can hold are cut by :func:`truncate_middle`: head and tail kept, a short marker
in between. The tail holds the final answer the critique judges and the head the approach, so the
middle (the longest and least decisive part of a worked solution) is what goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from sorl.sampler import Sampler
from sorl.tasks.base import Question, Task

#: What replaces the cut middle of an embedded response (as text; encode it for token ids).
TRUNCATION_MARKER = "\n[...]\n"

Item = TypeVar("Item")


def check_length_budgets(
    max_prompt_tokens: int,
    max_response_tokens: int,
    critique_prompt_overhead: int,
    max_critique_tokens: int,
    max_model_len: int | None,
    max_embedded_response_tokens: int | None = None,
) -> None:
    """Raises ``ValueError`` (with the numbers and what to change) unless both sequences fit.

    - answer: ``max_prompt_tokens + max_response_tokens <= max_model_len``;
    - critique: ``max_prompt_tokens + critique_prompt_overhead + embedded + max_critique_tokens
      <= max_model_len``, where ``embedded = min(max_response_tokens, max_embedded_response_tokens)``
      (responses above ``max_embedded_response_tokens`` are cut from the middle, see
      :func:`truncate_middle`; ``None``: embedded whole).

    ``max_model_len=None`` (no engine limit) checks nothing but the arguments.

    Args:
        max_prompt_tokens: longest answer prompt (question in its template, chat markup included).
        max_response_tokens: the response bound (``max_response_tokens`` of the DataModule).
        critique_prompt_overhead: tokens a critique prompt adds to the answer prompt and the
            response it embeds (its instructions and markup): its length minus theirs; negative
            when the critique template is the shorter one.
        max_critique_tokens: the critique bound.
        max_model_len: the engine's longest prompt + completion, or ``None``.
        max_embedded_response_tokens: the most response tokens a critique prompt embeds, or ``None``.
    """
    for name, value in [
        ("max_prompt_tokens", max_prompt_tokens),
        ("max_response_tokens", max_response_tokens),
        ("max_critique_tokens", max_critique_tokens),
        # negative when the critique template is shorter than the answer template, never below it
        ("max_prompt_tokens + critique_prompt_overhead", max_prompt_tokens + critique_prompt_overhead),
    ]:
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if max_embedded_response_tokens is not None and max_embedded_response_tokens < 1:
        raise ValueError(f"max_embedded_response_tokens must be >= 1 or None, got {max_embedded_response_tokens}")
    if max_model_len is None:
        return
    answer = max_prompt_tokens + max_response_tokens
    if answer > max_model_len:
        raise ValueError(
            f"answer sequences need up to {max_prompt_tokens} (prompt) + {max_response_tokens} (response) = "
            f"{answer} tokens, more than max_model_len {max_model_len}: lower max_response_tokens to "
            f"{max_model_len - max_prompt_tokens} or raise max_model_len"
        )
    embedded = max_response_tokens if max_embedded_response_tokens is None else min(max_response_tokens, max_embedded_response_tokens)
    critique = max_prompt_tokens + critique_prompt_overhead + embedded + max_critique_tokens
    if critique > max_model_len:
        room = max_model_len - max_prompt_tokens - critique_prompt_overhead - max_critique_tokens
        hint = f"set max_embedded_response_tokens to {room} (cut from the middle), " if room >= 1 else ""
        raise ValueError(
            f"critique sequences need up to {max_prompt_tokens} (prompt) + {critique_prompt_overhead} "
            f"(critique template) + {embedded} (embedded response) + {max_critique_tokens} (critique) = "
            f"{critique} tokens, more than max_model_len {max_model_len}: {hint}lower max_response_tokens "
            "or max_critique_tokens, or raise max_model_len"
        )


def truncate_middle(items: Sequence[Item], max_items: int, marker: Sequence[Item]) -> Sequence[Item]:
    """``items`` itself if it has at most ``max_items`` elements; otherwise its head, ``marker`` and
    its tail, exactly ``max_items`` long, the head one longer than the tail when they cannot be equal.

    Works on token ids (lists, tuples; pass the encoded marker) and on text (``str``; e.g.
    :data:`TRUNCATION_MARKER`). Token ids are the safer unit: a cut text re-tokenizes differently
    at the seams, a cut id list does not. Raises ``ValueError`` when ``max_items`` leaves room for
    less than one element on each side of the marker.
    """
    if len(items) <= max_items:
        return items
    kept = max_items - len(marker)
    if kept < 2:
        raise ValueError(f"max_items {max_items} leaves no room for a head and a tail around a marker of {len(marker)}")
    head, tail = (kept + 1) // 2, kept // 2
    return items[:head] + type(items)(marker) + items[len(items) - tail :]


def check_template_lengths(
    task: Task,
    sampler: Sampler,
    max_response_tokens: int,
    max_critique_tokens: int,
    max_model_len: int,
    max_embedded_response_tokens: int | None = None,
) -> None:
    """:func:`check_length_budgets` for a task's own templates, before any rollout: the prompts of
    an empty question (and an empty response) encoded as rollouts encode them, plus the bounds
    (``max_critique_tokens`` 0 when no critique is sampled). A question's own tokens add to both."""
    empty = Question("", "", "")
    prompt, critique_prompt = (len(ids) for ids in sampler.encode([task.response_prompt(empty), task.critique_prompt(empty, "")]))
    check_length_budgets(
        prompt, max_response_tokens, critique_prompt - prompt, max_critique_tokens, max_model_len, max_embedded_response_tokens
    )
