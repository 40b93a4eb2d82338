"""Batch schedulers: pure argument builders and output parsers."""

from hpcgate.schedulers.base import FINAL_STATES, JobRecord, Scheduler
from hpcgate.schedulers.slurm import Slurm

__all__ = ["FINAL_STATES", "JobRecord", "Scheduler", "Slurm"]
