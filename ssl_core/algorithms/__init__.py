"""Algorithm registry; importing this package registers supervised, fixmatch and cmpl."""

from ssl_core.algorithms import cmpl, fixmatch, supervised  # noqa: F401  (imported for their registrations)
from ssl_core.algorithms.registry import (
    ALGORITHMS,
    Algorithm,
    StepOutput,
    get_algorithm,
    list_algorithms,
    register_algorithm,
)

__all__ = ["ALGORITHMS", "Algorithm", "StepOutput", "get_algorithm", "list_algorithms", "register_algorithm"]
