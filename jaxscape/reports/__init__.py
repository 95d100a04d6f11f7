"""Renderers over results dirs: plots, the HTML report, Markdown reports. Free of JAX; import the core's
JAX-free modules (metrics, results) only."""

from jaxscape._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)  # jaxscape.PKG.MODULE loads MODULE on first use
