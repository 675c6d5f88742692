r"""Sweeps on Ray Tune: a grid of configs trained as ordinary run folders, surviving kills, selected on validation.

==========================================  =====================================================================
:mod:`~injflow.sweep.spec`                   the spec (YAML): base config, overrides, grid, groups, selection,
                                             evaluations; validated before Ray is imported
:mod:`~injflow.sweep.grid`                   the trials (cartesian product per grid entry) with stable names;
                                             :func:`trial_overrides` builds a trial's ``--set`` list
:mod:`~injflow.sweep.records`                a trial's state and reported metrics, read from its run folder
:mod:`~injflow.sweep.selection`              per group and criterion, the best trial (never the test split)
:mod:`~injflow.sweep.tables`                 ``trials.csv``, ``selection.json`` and the summary
:mod:`~injflow.sweep.scoring`                FID / pixel scores of a run on a split (the papers' protocol)
:mod:`~injflow.sweep.trial`                  what runs in a Ray worker: train or resume, score, report
:mod:`~injflow.sweep.progress`               one line per trial state change
:mod:`~injflow.sweep.estimate`               ``--dry-run`` estimates from measured runs
:mod:`~injflow.sweep.runner`                 the driver (:func:`run_sweep`, ``injflow sweep``)
==========================================  =====================================================================

Importing this package does not import Ray; the driver imports it when trials are to run. See ``docs/sweeps.md``.
"""

from .grid import Trial, expand_grid, trial_overrides
from .records import TrialRecord, read_record
from .runner import RayMissingError, SweepResult, run_sweep
from .selection import Selection, select
from .spec import Criterion, Evaluation, SpecError, SweepSpec, load_spec, spec_from_dict

__all__ = [
    "Criterion",
    "Evaluation",
    "RayMissingError",
    "Selection",
    "SpecError",
    "SweepResult",
    "SweepSpec",
    "Trial",
    "TrialRecord",
    "expand_grid",
    "load_spec",
    "read_record",
    "run_sweep",
    "select",
    "spec_from_dict",
    "trial_overrides",
]
