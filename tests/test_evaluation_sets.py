"""Per-dataset evaluation: accuracy per evaluation set and their average, in the table and JSON."""

from types import SimpleNamespace

import pytest
import torch

from sorl.callbacks.evaluation import summary_json, summary_table
from sorl.evaluation import EvalMetrics

ONE_PROCESS = SimpleNamespace(world_size=1)  # what the reduction over ranks reads


def _generation(datasets: list[str], correct: list[float]) -> dict:
    return {"kind": "generation", "datasets": datasets, "correct": torch.tensor(correct), "mean_correct": None}


def _critiques(datasets: list[str], predicted: list[int], target: list[int]) -> dict:
    said_wrong = torch.tensor(predicted, dtype=torch.float32)
    return {
        "kind": "critique", "datasets": datasets, "predicted": torch.tensor(predicted), "target": torch.tensor(target),
        "said_wrong": said_wrong, "no_verdict": torch.zeros(len(predicted)),
    }  # fmt: skip


def test_accuracy_per_set_and_the_mean_over_sets():
    metrics = EvalMetrics()
    metrics.update(_generation(["gsm8k", "gsm8k", "math500", ""], [1.0, 0.0, 1.0, 1.0]))
    metrics.update(_generation(["gsm8k", "gsm8k"], [1.0, 1.0]))
    metrics.update(_critiques(["gsm8k", "gsm8k"], [1, 0], [1, 1]))
    values = metrics.compute(ONE_PROCESS)
    assert values["eval/gen_acc"] == pytest.approx(5 / 6) and values["eval/crit_acc"] == 0.5
    assert {k: v for k, v in values.items() if "/" in k[5:] or k.endswith("_avg")} == {
        "eval/gen_acc/gsm8k": 0.75,
        "eval/gen_acc/math500": 1.0,
        "eval/gen_acc_avg": 0.875,  # the mean of the sets' accuracies, as in the paper's table
        "eval/crit_acc/gsm8k": 0.5,
        "eval/crit_acc_avg": 0.5,
    }
    assert metrics.compute(ONE_PROCESS) == {}  # reset after computing


def test_unnamed_questions_give_totals_only():
    metrics = EvalMetrics()
    metrics.update(_generation(["", ""], [1.0, 0.0]))
    assert metrics.compute(ONE_PROCESS) == {"eval/gen_acc": 0.5}


def test_summary_has_a_row_per_set_and_the_old_keys():
    before = {"eval/gen_acc": 0.2, "eval/gen_acc/gsm8k": 0.3, "eval/gen_acc/amc23": 0.1, "eval/gen_acc_avg": 0.2}
    after = {"eval/gen_acc": 0.4, "eval/gen_acc/gsm8k": 0.5, "eval/gen_acc/amc23": 0.3, "eval/gen_acc_avg": 0.4,
             "eval/crit_acc": 0.6, "eval/crit_acc/gsm8k": 0.6, "eval/crit_acc_avg": 0.6}
    result = summary_json(before, after)
    assert result["gen_acc_before"] == 0.2 and result["crit_acc_after"] == 0.6 and result["crit_acc_before"] is None
    assert result["gen_acc_gsm8k_after"] == 0.5 and result["gen_acc_amc23_before"] == 0.1
    assert result["gen_acc_avg_before"] == 0.2 and result["crit_acc_avg_after"] == 0.6
    table = summary_table(before, after).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in table if line and line.split()[0] in ("gsm8k", "amc23", "average")}
    assert rows == {
        "gsm8k": ["0.300", "0.500", "-", "0.600"],
        "amc23": ["0.100", "0.300", "-", "-"],
        "average": ["0.200", "0.400", "-", "0.600"],
    }
    assert "dataset" not in summary_table({"eval/gen_acc": 0.2}, {"eval/gen_acc": 0.3})


def test_evaluation_is_sampled_when_iterated_with_the_current_policy():
    """The evaluation loader samples each time it is iterated: a validation after training scores
    the trained policy even when Lightning reuses a loader built before (e.g. for a sanity check)."""
    from sorl import ArithmeticTask, GCRLModule, RolloutDataModule

    module = GCRLModule()
    module.configure_model()
    datamodule = RolloutDataModule(ArithmeticTask(num_eval=4), eval_samples=0, eval_max_questions=4)
    datamodule.trainer = SimpleNamespace(sanity_checking=False, world_size=1, global_rank=0, lightning_module=module, strategy=None)
    loader = datamodule.val_dataloader()
    before = list(loader)[1]["no_verdict"]
    with torch.no_grad():
        module.policy.lm_head.weight.zero_()  # every token equally likely: greedy writes no verdict
    after = list(loader)[1]["no_verdict"]
    assert before.sum() < len(before) and after.sum() == len(after) == 4
    datamodule.trainer.sanity_checking = True
    assert len(list(loader)[0]["correct"]) == 2  # a sanity check scores two questions only
