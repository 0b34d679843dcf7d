"""Algorithm registry; importing this package registers every algorithm module (supervised, fixmatch, cmpl, ...)."""

from ssl_core.algorithms import (  # noqa: F401  (imported for their registrations)
    cmpl,
    comatch,
    distill,
    fixmatch,
    mean_teacher,
    meta_pseudo_labels,
    mixmatch,
    noisy_student,
    pseudo_label,
    supervised,
    svformer,
)
from ssl_core.algorithms.base import Algorithm, StepOutput
from ssl_core.algorithms.registry import ALGORITHMS, get_algorithm, list_algorithms, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "StepOutput", "get_algorithm", "list_algorithms", "register_algorithm"]
