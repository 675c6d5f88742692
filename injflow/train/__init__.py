"""The training engine: the fit runner (:mod:`~injflow.train.runner`), the resume policy, the Lightning module, data
module, callbacks, loggers and trainer wiring.

Importing this package imports no Lightning: :mod:`~injflow.train.runner` checks a whole run (config, data, nets,
folder) before :mod:`~injflow.train.trainer` brings Lightning in, so a mistake is reported at once. The config lives in
:mod:`injflow.config`, the model in :mod:`injflow.model`, inference-time loading in :mod:`injflow.loading`.
"""

from .runner import FitResult, RunPlan, fit_config, prepare_run, resume_run

__all__ = ["FitResult", "RunPlan", "fit_config", "prepare_run", "resume_run"]
