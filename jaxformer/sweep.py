"""Variant sweeps: the old module name, kept for importers and `jaxformer.sweep:sweep_main` /
`jaxformer.sweep:report_main` (cli.SUBCOMMANDS). The code lives in jaxformer/sweeps/: the sweep config and its
points (points.py, whose docstring documents the sweep config's fields), running them (running.py), and the
reports (reports.py, aggregate.py, plots.py)."""

from __future__ import annotations

from jaxformer.sweeps.points import (  # noqa: F401
    SEED_FIELD,
    SWEEP_FIELDS,
    VARIANT_FIELD,
    Point,
    axis_override,
    axis_values,
    check_statistics,
    eval_lengths_for,
    flatten_axes,
    init_overrides,
    load_sweep,
    make_points,
)
from jaxformer.sweeps.reports import (  # noqa: F401
    CSV_COLUMNS,
    _title,
    add_statistics,
    families_of,
    report_main,
    size_baselines,
    size_plots,
    sizes_markdown,
    summary_lines,
    sweep_settings,
    write_reports,
)
from jaxformer.sweeps.running import (  # noqa: F401
    SweepStopped,
    check_same_config,
    describe,
    final_checkpoint_exists,
    point_state,
    run_point,
    run_sweep,
    sweep_main,
    trained_to,
)
