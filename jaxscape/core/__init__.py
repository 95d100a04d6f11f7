"""The core: the model, its weights and their I/O, directions and perturbation, decoding, scoring, metrics,
the grid scan and the results-dir stores. Imports nothing from datasets, studies or reports."""

from jaxscape._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)  # jaxscape.PKG.MODULE loads MODULE on first use
