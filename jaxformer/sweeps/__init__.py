"""Variant sweeps, in three parts: the sweep config and its points (points.py), running them into run
directories (running.py), and the reports from those directories (reports.py, with aggregate.py and plots.py).
`jaxformer.sweep` re-exports the names for older importers."""
