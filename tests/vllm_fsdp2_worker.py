"""One rank of tests/test_vllm.py's 2-process FSDP2 check (run with ``torch.distributed.run``):
the embedded policy sharded per decoder layer over gloo, one optimizer step, then vLLM's greedy
outputs after a streamed sync against HFEngine's with whole parameters. Writes rank<N>.json."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from sorl.distributed import full_parameters, shard_policy
from sorl.engines import HFEngine, SamplingParams, VLLMEngine
from sorl.engines.hf import left_pad
from sorl.policy import completion_logprobs, load_policy, load_tokenizer
from sorl.sampler import encode_prompts
from sorl.tasks.arithmetic import ArithmeticTask


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(None)
    full = load_policy(None)
    sizes = {name: t.numel() * t.element_size() for name, t in full.state_dict().items()}
    policy = load_policy(None).train()
    shard_policy(policy, init_device_mesh("cpu", (dist.get_world_size(),)), MixedPrecisionPolicy())
    task = ArithmeticTask()
    questions = task.eval_questions()
    # The ranks sample different prompts, as many as they like: nothing collective runs in generate.
    prompts = encode_prompts(tokenizer, [task.response_prompt(q) for q in questions[rank * 12 : rank * 12 + 24 - 12 * rank]])
    greedy = SamplingParams(greedy=True, max_new_tokens=64)

    engine, hf = VLLMEngine(), HFEngine()
    for each in (engine, hf):
        each.setup(policy, tokenizer)
    engine.sync_weights(policy)  # every rank: starts vLLM and streams the initial weights
    before = [c.token_ids for group in engine.generate(prompts, 1, greedy) for c in group]

    # One AdamW step on the NLL of "A:7" + EOS after every prompt (each rank its prompts; FSDP2
    # averages the gradients).
    target = tokenizer("A:7", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids, mask = left_pad([p + target for p in prompts], tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    logprobs, _ = completion_logprobs(policy, ids, mask, torch.tensor([target] * len(prompts)))
    (-logprobs.mean()).backward()
    optimizer.step()
    optimizer.zero_grad()

    engine.sync_weights(policy)
    sharded_after_sync = all(isinstance(p, DTensor) for p in policy.parameters())
    held_after_sync = engine.sync_bytes_held
    synced = [c.token_ids for group in engine.generate(prompts, 1, greedy) for c in group]
    with full_parameters(SimpleNamespace(lightning_module=SimpleNamespace(policy=policy))):
        expected = [c.token_ids for group in hf.generate(prompts, 1, greedy) for c in group]
    # A sync where only rank 0 samples afterwards (an evaluation shard left empty): no hang.
    engine.sync_weights(policy)
    if rank == 0:
        engine.generate(prompts[:2], 1, greedy)
    dist.barrier()
    Path(out_dir, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "before": before,
                "synced": synced,
                "expected": expected,
                "peak_bytes": engine.last_sync_peak_bytes,
                "held_after_sync": held_after_sync,
                "sharded_after_sync": sharded_after_sync,
                "largest_bytes": max(sizes.values()),
                "embedding_bytes": sizes["model.embed_tokens.weight"],
                "model_bytes": sum(size for name, size in sizes.items() if name != "lm_head.weight"),  # tied
            }
        )
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
