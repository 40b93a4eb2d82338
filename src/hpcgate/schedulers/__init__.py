"""Batch schedulers: pure argument builders and output parsers."""

from hpcgate.schedulers.base import JobRecord, Phase, Scheduler

__all__ = ["JobRecord", "Phase", "Scheduler"]
