"""Checkpoints and recovery: what a crashed run has left, and whether and how it can resume."""

from elspeth_core.checkpoint.manager import CheckpointManager
from elspeth_core.checkpoint.recovery import RecoveryManager, ResumePlan, ResumePoint

__all__ = ["CheckpointManager", "RecoveryManager", "ResumePlan", "ResumePoint"]
