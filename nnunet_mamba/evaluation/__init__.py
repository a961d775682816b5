"""Paper-protocol evaluation: Dice, IoU, HD95 and NSD per case and class, and each paper's summary.

See :mod:`nnunet_mamba.evaluation.metrics` for the metric definitions and empty-mask rules and
:mod:`nnunet_mamba.evaluation.protocols` for what each protocol reports.
"""
from .metrics import RegionScores, score_region
from .protocols import PROTOCOLS, EvalClass, ProtocolError, resolve_classes, summarize
from .runner import EvaluationError, EvaluationResult, evaluate_folders

__all__ = [
    "PROTOCOLS",
    "EvalClass",
    "EvaluationError",
    "EvaluationResult",
    "ProtocolError",
    "RegionScores",
    "evaluate_folders",
    "resolve_classes",
    "score_region",
    "summarize",
]
