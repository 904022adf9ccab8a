"""The FSDP config (GPU only, so not run here) parses and builds a strategy that wraps decoder layers."""

from pathlib import Path

import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import FSDPStrategy

ROOT = Path(__file__).resolve().parents[1]


def test_fsdp_config_builds_a_strategy_wrapping_decoder_layers():
    strategy = yaml.safe_load((ROOT / "configs" / "strategy" / "fsdp.yaml").read_text())["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    parser = ArgumentParser()
    parser.add_class_arguments(FSDPStrategy, "strategy")
    config = parser.parse_object({"strategy": strategy["init_args"]})
    built = parser.instantiate(config).strategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    assert LlamaDecoderLayer in built.kwargs["auto_wrap_policy"]._module_classes
