"""The GPU FSDP2 configs (not run here: no GPU) parse and build the strategy that tests/test_fsdp2.py
runs on CPU: Lightning's ModelParallelStrategy with every process in the data-parallel (sharding)
dimension."""

from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import ModelParallelStrategy

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["strategy/fsdp.yaml", "qwen2.5_gpu.yaml", "strategy/fsdp_cpu.yaml"])
def test_fsdp_configs_build_a_model_parallel_strategy_that_shards_over_all_processes(config):
    trainer = yaml.safe_load((ROOT / "configs" / config).read_text())["trainer"]
    strategy = trainer["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
    parser = ArgumentParser()
    parser.add_class_arguments(ModelParallelStrategy, "strategy")
    built = parser.instantiate(parser.parse_object({"strategy": strategy["init_args"]})).strategy
    assert built._tensor_parallel_size == 1
    if "devices" in trainer:  # fsdp.yaml leaves devices to the base config (8 in qwen2.5_gpu.yaml)
        assert built._data_parallel_size == trainer["devices"]
