"""Errors a policy raises on purpose; messages name the file, key or shape at fault."""

from __future__ import annotations


class PolicyError(Exception):
    """Base of every policy error."""


class PolicyConfigError(PolicyError, ValueError):
    """A policy option is invalid, or the policy does not fit the robot."""


class CheckpointError(PolicyError):
    """A checkpoint is missing a file, is corrupt, or disagrees with its config."""
