"""What runs on models: landscapes, finetuning, the toy model's build, judges, coherence, studies and the papers'
findings, and the views that assemble a results dir. Imports core, datasets and reports."""

from jaxscape._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)  # jaxscape.PKG.MODULE loads MODULE on first use
