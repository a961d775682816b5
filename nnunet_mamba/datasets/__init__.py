"""Converters from official dataset downloads to nnU-Net v2 raw datasets.

``convert(name, src, dataset_id)`` with a name from :data:`CONVERTERS`:
``synapse``, ``synapse8``, ``amos-ct``, ``amos-ctmr``, ``lits``, ``isic2017``, ``isic2018``, ``ph2``.
"""
from .common import ConversionError, ConversionInterrupted, DatasetPlan, SourceOptions, write_dataset
from .registry import CONVERTERS, convert

__all__ = [
    "CONVERTERS",
    "ConversionError",
    "ConversionInterrupted",
    "DatasetPlan",
    "SourceOptions",
    "convert",
    "write_dataset",
]
