"""sia-engine: self-improving LLM agents whose whole history is an append-only, hash-chained log.

Importing this package is light (no torch): events, the reducer and verification run on machines
without a model. Import the submodules you need: ``sia_engine.domain.events``, ``sia_engine.domain.state``,
``sia_engine.domain.history``, ``sia_engine.domain.integrity``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
