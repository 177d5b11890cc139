"""Compatibility: ADiT versions registered before the shared generation layer import records from here."""

from chemgen.generation.records import Failure, split_failures, to_systems

__all__ = ["Failure", "split_failures", "to_systems"]
