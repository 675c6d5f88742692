"""The resume policy: when a run may continue from its last checkpoint, and with which changed keys.

A resumed run continues bit-identically (weights, optimiser, RNG streams, the interrupted epoch's sums, the CSV
log); it may change only what does not shape the saved state (:data:`injflow.config.RESUMABLE_KEYS`: how long,
where and how it trains and logs). Lengthening a run is refused where it would bend a schedule defined over the
run's length (a one-cycle or cosine learning rate, a linear β over the whole run).
"""

from __future__ import annotations

from ..config import RESUMABLE_KEYS, Config, ConfigError, changed_keys, config_to_dict, load_config, lookup_key
from ..errors import CheckpointError, RunFolderError
from ..io import load_torch
from ..model import InjectiveFlow
from ..rundir import RunDir

__all__ = ["check_resume", "extends_run"]


def check_resume(config: Config, run: RunDir, flow: InjectiveFlow) -> tuple[int, int | None]:
    """Checks a resume (checkpoint readable and matching ``flow``, changed keys allowed).

    Returns:
        The checkpoint's optimiser step and the number of CSV rows it recorded (``None`` if it did not).

    Raises:
        RunFolderError: there is no checkpoint to resume from.
        CheckpointError: the checkpoint is not a training checkpoint, or does not fit the model.
        ConfigError: a key that shaped the saved state was changed, or a length change would bend a schedule.
    """
    if not run.last_checkpoint.is_file():
        raise RunFolderError(f"cannot resume: {run.last_checkpoint} does not exist (the run never saved a checkpoint); "
                             f"start it again without --resume")
    ckpt = load_torch(run.last_checkpoint, what="checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{run.last_checkpoint} is not a training checkpoint; move it away and start again")
    flow.load_nets(ckpt["state_dict"], source=run.last_checkpoint, prefix="flow.")
    step = int(ckpt.get("global_step", 0))
    saved = config_to_dict(load_config(run.config))
    changed = changed_keys(saved, config_to_dict(config))
    frozen = [k for k in changed if not k.startswith(RESUMABLE_KEYS)]
    if frozen:
        raise ConfigError(f"cannot be changed when resuming (the checkpoint was trained with "
                          f"{lookup_key(saved, frozen[0])!r}); start a new run with the new value instead", key=frozen[0])
    length = [k for k in ("train.max_epochs", "train.max_steps", "train.max_time") if k in changed]
    if length:
        if config.optim.scheduler.name in ("onecycle", "cosine"):
            raise ConfigError(f"a {config.optim.scheduler.name} learning-rate schedule spans the run's original length and "
                              f"cannot be stretched when resuming (it is fixed in the checkpoint); start a new run, or "
                              f"resume with the saved length", key=length[0])
        spans = config.method.schedules_over_run()
        if spans and not config.train.max_time:
            raise ConfigError(f"method.{spans[0]} follows a schedule over the whole run; changing the run's length when "
                              f"resuming would bend it after step {step}; start a new run, or give the schedule fixed "
                              f"`steps`", key=length[0])
    rows = ckpt.get("injflow_csv_rows")
    if rows is None:
        raise CheckpointError(f"{run.last_checkpoint} is not an injflow training checkpoint (it records no metrics.csv "
                              f"rows); move it away and start again")
    return step, int(rows)


def extends_run(config: Config, run: RunDir) -> bool:
    """Whether resuming a finished run with ``config`` asks for more training than it had."""
    t, saved = config.train, load_config(run.config).train
    longer_steps = saved.max_steps != -1 and (t.max_steps == -1 or t.max_steps > saved.max_steps)
    return t.max_epochs > saved.max_epochs or longer_steps or (t.max_time or 0) > (saved.max_time or 0)
