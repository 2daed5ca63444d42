"""The jobs :func:`lgiformer.engine.run` trains, one :class:`Task` each: pretraining, DFER classification, AU
detection and DFER + AU; each task's config schema lives beside it (``finetune/run.py`` shares one schema)."""
from lgiformer.tasks.au import AUConfig, AUTask
from lgiformer.tasks.base import Task
from lgiformer.tasks.dfer import DFERTask
from lgiformer.tasks.finetune import FinetuneConfig, finetune_task, load_finetune_config
from lgiformer.tasks.multitask import DFERAUTask
from lgiformer.tasks.pretrain import PretrainConfig, PretrainTask, load_pretrain_config

TASKS = {task.name: task for task in (PretrainTask, DFERTask, AUTask, DFERAUTask)}

__all__ = ["AUConfig", "AUTask", "DFERAUTask", "DFERTask", "FinetuneConfig", "PretrainConfig", "PretrainTask", "TASKS",
           "Task", "finetune_task", "load_finetune_config", "load_pretrain_config"]
