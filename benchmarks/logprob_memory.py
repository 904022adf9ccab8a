"""Bytes autograd keeps for backward in ``completion_logprobs``, unchunked vs chunked.

A randomly initialised model of SmolLM2-135M's shape (30 layers, hidden 576, vocabulary 49,152,
tied embeddings; nothing is downloaded). Saved tensors are counted with
``torch.autograd.graph.saved_tensors_hooks``, once per distinct storage, parameters left out
(saving a parameter costs no memory). "head" is the logprob part alone: the same count for
``sequence_logprobs_from_logits`` / ``chunked_logprobs_from_hidden`` on the final hidden states.
Also the CPU time of the head's forward + backward per chunk size (a rough guide; GPUs differ).

    python benchmarks/logprob_memory.py [--batch 4] [--prompt 64] [--completion 512]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sorl.loss import chunked_logprobs_from_hidden, sequence_logprobs_from_logits
from sorl.policy import completion_logprobs

SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
)


def saved_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor]) -> tuple[int, object]:
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in excluded:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return sum(storages.values()), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--completion", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).train()
    params = list(model.parameters())
    vocab = model.config.vocab_size
    input_ids = torch.randint(0, vocab, (args.batch, args.prompt + args.completion))
    attention_mask = torch.ones_like(input_ids)
    completion_ids = input_ids[:, args.prompt :]
    mib = 2**20
    print(f"SmolLM2-135M-shaped, B={args.batch}, prompt {args.prompt}, completion {args.completion}, V={vocab}")
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            whole = {}
            for chunk_size in (None, 1024):
                whole[chunk_size], _ = saved_bytes(
                    lambda: completion_logprobs(model, input_ids, attention_mask, completion_ids, 1.0, chunk_size), params
                )
            with torch.no_grad():
                hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            hidden = hidden[:, args.prompt - 1 : -1].detach().requires_grad_(True)
            weight = model.lm_head.weight
            head_full, _ = saved_bytes(
                lambda: sequence_logprobs_from_logits(torch.nn.functional.linear(hidden, weight), completion_ids), params
            )
            head_chunked, _ = saved_bytes(
                lambda: chunked_logprobs_from_hidden(hidden, weight, None, completion_ids, 1.0, 1024), params
            )
        label = "bf16 autocast" if autocast else "float32"
        print(
            f"{label}: whole call {whole[None] / mib:.1f} MiB -> {whole[1024] / mib:.1f} MiB "
            f"({whole[None] / whole[1024]:.1f}x); head only {head_full / mib:.1f} MiB -> {head_chunked / mib:.2f} MiB "
            f"({head_full / head_chunked:.0f}x)"
        )
    hidden = hidden.detach().requires_grad_(True)
    for chunk_size in (None, 256, 512, 1024, 2048):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            if chunk_size is None:
                logprobs, _ = sequence_logprobs_from_logits(hidden @ weight.T, completion_ids)
            else:
                logprobs, _ = chunked_logprobs_from_hidden(hidden, weight, None, completion_ids, 1.0, chunk_size)
            logprobs.sum().backward()
            times.append(time.perf_counter() - started)
        print(f"head forward+backward, float32, chunk_size={chunk_size}: median {sorted(times)[1]:.2f} s")


if __name__ == "__main__":
    main()
