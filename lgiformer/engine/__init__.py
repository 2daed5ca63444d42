"""The engine: ``run(cfg, task)`` (:mod:`lgiformer.engine.runner`), the epoch loop, the checkpointer, DeepSpeed
setup, schedules and run logging."""
from lgiformer.engine.runner import run

__all__ = ["run"]
