"""Experiment configs: each module defines `get_config() -> ml_collections.ConfigDict`.

Installed as the package `jaxformer.configs`, so `--config default` (a name) and `--config configs/default.py`
(a path) both work, and derived configs import their base with `from jaxformer.configs import default`.
"""
