"""Interpretability workbench core: adapters, intake, results, store, CLI.

Importing this package never imports torch or tensorflow; the adapters do, lazily.
"""

__version__ = "0.1.0"
