"""Finetuning tasks: turn a batch into losses (the engine's ``task`` argument) and load pretrained weights."""
from lgiformer.tasks.pretrained import LoadReport, load_pretrained, read_state_dict, release_model_args

__all__ = ["LoadReport", "load_pretrained", "read_state_dict", "release_model_args"]
