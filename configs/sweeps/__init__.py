"""Sweep configs for `jaxformer sweep`: each `get_config()` names a base config, the axes to vary and the eval lengths.

Installed as `jaxformer.configs.sweeps`, so `--config sweeps.positional` (a name) and
`--config configs/sweeps/positional.py` (a path) both work. The fields are documented in jaxformer/sweeps/points.py.
"""
