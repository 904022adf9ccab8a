"""The shipped cold-started policy and the cold-start recipe that produces it."""

import re
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sorl.cli import cli_main
from sorl.engines import HFEngine, SamplingParams
from sorl.policy import EMBEDDED_POLICY, load_policy, load_tokenizer
from sorl.tasks import ArithmeticTask

ROOT = Path(__file__).resolve().parents[1]
NUM = r"-?\d+"
RESPONSE = re.compile(rf"^({NUM}[+*-]{NUM}={NUM};)+A:{NUM}$")
CRITIQUE = re.compile(rf"^({NUM}[+*-]{NUM}={NUM}\|({NUM}|\?) (ok|no);)+A:{NUM}\|({NUM}|\?) (ok|no);V:(right|wrong)$")


def test_shipped_policy_writes_well_formed_responses_and_critiques():
    task = ArithmeticTask()
    policy, tokenizer = load_policy(EMBEDDED_POLICY), load_tokenizer(EMBEDDED_POLICY)
    engine = HFEngine()
    engine.setup(policy, tokenizer)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=128)
    questions = task.eval_questions()[:40]
    prompts = [tokenizer(task.response_prompt(q), add_special_tokens=False)["input_ids"] for q in questions]
    responses = [c.text for group in engine.generate(prompts, 2, sampling, seed=0) for c in group]
    well_formed = sum(bool(RESPONSE.match(r)) for r in responses) / len(responses)
    examples = task.critique_eval_set()[:40]
    prompts = [tokenizer(task.critique_prompt(e.question, e.response), add_special_tokens=False)["input_ids"] for e in examples]
    critiques = [c.text for group in engine.generate(prompts, 2, sampling, seed=0) for c in group]
    critiques_well_formed = sum(bool(CRITIQUE.match(c)) for c in critiques) / len(critiques)
    # Measured on the shipped policy at temperature 1.0: all well formed but a few; require most.
    assert well_formed >= 0.9, responses[:5]
    assert critiques_well_formed >= 0.9, critiques[:5]


def test_cold_start_config_runs_and_lowers_the_loss(tmp_path):
    cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "cold_start.yaml"),
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.max_steps=40",
            "--trainer.log_every_n_steps=5",
            "--trainer.enable_progress_bar=false",
            "--data.num_examples=4000",
            f"--model.export_dir={tmp_path / 'hf'}",
        ]
    )
    (event_file,) = tmp_path.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(event_file))
    accumulator.Reload()
    losses = [event.value for event in accumulator.Scalars("train/loss")]
    assert len(losses) >= 4
    assert losses[-1] < 0.7 * losses[0]
    assert (tmp_path / "hf" / "model.safetensors").exists()
