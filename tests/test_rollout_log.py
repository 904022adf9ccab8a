"""RolloutLog writes what the policy sampled and what it was rewarded for, round by round."""

import json

import pytest

from sorl.callbacks import RolloutLog
from sorl.rollout import round_sums


def test_every_sampled_completion_is_logged_with_its_reward(tmp_path):
    """Three real rounds logged every second round: rounds 0 and 2, every response and critique,
    rewards as the verifier and the verdict parser gave them."""
    from lightning.pytorch import Trainer

    from sorl import ArithmeticTask, GCRLModule, LabelBalancing, RolloutDataModule

    task = ArithmeticTask(num_eval=8)
    datamodule = RolloutDataModule(
        task, questions_per_round=16, responses_per_question=4, critique_pairs_per_round=4, critiques_per_response=4,
        batch_size=8,
    )  # fmt: skip
    trainer = Trainer(
        max_epochs=3, reload_dataloaders_every_n_epochs=1, callbacks=[LabelBalancing(), RolloutLog(str(tmp_path / "log"), 2)],
        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0, logger=False,
    )  # fmt: skip
    trainer.fit(GCRLModule(), datamodule)

    lines = [json.loads(line) for line in (tmp_path / "log" / "rollouts-rank0.jsonl").read_text().splitlines()]
    assert {line["round"] for line in lines} == {0, 2}
    last = datamodule.last_round
    logged = [line for line in lines if line["round"] == 2]
    responses = [line for line in logged if line["kind"] == "response"]
    critiques = [line for line in logged if line["kind"] == "critique"]
    assert [r["completion"] for r in responses] == [s.completion.text for s in last.responses]
    assert [c["completion"] for c in critiques] == [s.completion.text for s in last.critiques]
    assert len(responses) == 16 * 4 and critiques
    questions = {q.id: q for q in last.questions}
    for response in responses:
        assert response["reward"] == task.verify(questions[response["question_id"]], response["completion"])
        assert "verdict" not in response
    for critique in critiques:
        assert critique["verdict"] == task.parse_verdict(critique["completion"])
        assert critique["reward"] == float(critique["verdict"] is not None and critique["verdict"] == critique["is_right"])
        assert critique["response"] and critique["tokens"] > 0
    # the round's logged verdict share counts the same critiques
    says_wrong = sum(c["verdict"] is False for c in critiques)
    assert round_sums(last)["rollout/verdict_wrong_share"] == (says_wrong, len(critiques))


def test_every_n_rounds_must_be_positive():
    with pytest.raises(ValueError, match="every_n_rounds"):
        RolloutLog(every_n_rounds=0)
