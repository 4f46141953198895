"""The typed run records: what a run writes and the card, the report and later runs read back.

``RunDescription`` (the transfer recipe), ``RunResults`` (``all_results.json``) and the records
nested in them round-trip through JSON (``Record``): unknown keys are ignored and missing ones take
their defaults, so older run folders stay readable. Attributes instead of ``.get()`` chains.
"""
from .adaptation import DaptPhase, DomainAdaptation, SourceOnlyRun
from .base import Record
from .export import Int8Check, OnnxExport
from .run import BackboneChoice, EpochRecord, Phase, RunDescription, RunResults, ScratchRun, TransferGain

__all__ = [
    "BackboneChoice", "DaptPhase", "DomainAdaptation", "EpochRecord", "Int8Check", "OnnxExport", "Phase", "Record",
    "RunDescription", "RunResults", "ScratchRun", "SourceOnlyRun", "TransferGain"
]
