r"""The one training engine: a Lightning module joining an :class:`~injflow.model.InjectiveFlow` and a method.

Per optimiser step it (1) adds Gaussian noise of std ``input_noise`` to the batch (FIF trains with
σ = 0.01, App. E.2), (2) asks the method for its loss terms (for a conditional model, on the view of the model
given the batch's labels), (3) stops with :class:`~injflow.errors.NonFiniteLossError` naming the step and the
term if the loss is not finite — before the optimiser touches the weights on the CPU, where the flag is read every
step; on an accelerator every ``check_finite_every_n_steps`` steps, and the state guard of the checkpoints
(:mod:`injflow.train.callbacks`) keeps the weights of a non-finite step out of every checkpoint — and (4) adds the
terms to running sums on the device.

Logging costs no host synchronisation per step: the step values are read every ``log_every_n_steps`` steps, the
epoch means from the running sums once per epoch (all-reduced over processes), and the sums of an interrupted
epoch travel in the checkpoint, so a resumed run logs the same epoch means as an uninterrupted one. Validation
evaluates the same terms without input noise, with fixed seeds (so the Hutchinson noise is the same every epoch and
the training RNG stream is untouched), optionally with EMA weights.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from ..config import OptimConfig
from ..errors import NonFiniteLossError
from ..estimators import skip_input_checks
from ..methods import Clock, Method
from ..model import InjectiveFlow

__all__ = ["FlowModule", "NonFiniteLossError"]

#: The host reads the non-finite flag this often on accelerators when ``check_finite_every_n_steps`` is not set.
ACCELERATOR_CHECK_EVERY = 50


class _Nets:
    """What a method sees in validation: ``encode``, ``decode`` and ``latent`` (possibly the EMA copies of the nets)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: nn.Module) -> None:
        self.encoder, self.decoder, self.latent = encoder, decoder, latent

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)


class _EpochSums:
    """Running sums of per-sample terms on the device (float64), without a host read per step."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, Tensor], n: int) -> None:
        for k, v in terms.items():
            v = v.detach()
            total = v.double().sum() if v.ndim else v.double() * n
            self.sums[k] = self.sums[k] + total if k in self.sums else total
        self.count += n

    def means(self, strategy: Any, world_size: int) -> dict[str, float]:
        """Means over the epoch (over every process under DDP: one all-reduce per epoch)."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        device = self.sums[keys[0]].device
        packed = torch.stack([self.sums[k] for k in keys] + [torch.tensor(float(self.count), dtype=torch.float64, device=device)])
        if world_size > 1:
            packed = strategy.reduce(packed, reduce_op="sum")
        values = packed.tolist()
        return {k: values[i] / max(values[-1], 1.0) for i, k in enumerate(keys)}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, v in state["sums"].items()}
        self.count = int(state["count"])

    def reset(self) -> None:
        self.sums, self.count = {}, 0


class FlowModule(L.LightningModule):
    """Lightning module for every method.

    Arguments:
        flow: The model (nets + latent).
        method: The training objective (hyper-parameters and schedules only).
        optim: Optimiser, LR schedule and clipping settings.
        input_noise: Std of Gaussian noise added to training inputs.
        ema_decay: Decay of an exponential moving average of the weights (``None``: no EMA). When set,
            validation and the exported model use the EMA weights.
        seed: Seed of the validation noise.
        log_every_n_steps: How often step values are logged (one host read each time).
        check_finite_every_n_steps: How often the host reads the non-finite flag (``None``: every step on the CPU,
            every :data:`ACCELERATOR_CHECK_EVERY` steps elsewhere).
        max_time: Wall-clock budget in seconds; schedules then follow the spent fraction of it.
        describe: The model description saved into every checkpoint (:meth:`InjectiveFlow.describe`).
    """

    def __init__(
        self,
        flow: InjectiveFlow,
        method: Method,
        optim: OptimConfig | None = None,
        *,
        input_noise: float = 0.0,
        ema_decay: float | None = None,
        seed: int = 0,
        log_every_n_steps: int = 10,
        check_finite_every_n_steps: int | None = None,
        max_time: float | None = None,
        describe: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.flow = flow
        self.method = method
        self.optim = optim or OptimConfig()
        self.input_noise = float(input_noise)
        self.seed = int(seed)
        self.log_every_n_steps = int(log_every_n_steps)
        self.check_finite_every_n_steps = check_finite_every_n_steps
        self.max_time = max_time
        self.describe = describe or flow.describe()
        self.ema: nn.Module | None = None
        if ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            nets = nn.ModuleDict({"encoder": flow.encoder, "decoder": flow.decoder})
            self.ema = AveragedModel(nets, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)
            from .ema import EMAUpdater

            # AveragedModel's own update reads its counter on the host twice per step (two GPU synchronisations).
            self._ema_update = EMAUpdater(self.ema, ema_decay)
        self._rng_to_restore: dict[str, Any] | None = None
        self._train_sums, self._val_sums = _EpochSums(), _EpochSums()
        self._first_bad_step: Tensor | None = None
        self._pending_error: str | None = None
        self._check_every = 1
        self._timer: Any = None
        #: The run's CSV logger (set by the runner): its row count goes into every checkpoint.
        self.csv_logger: Any = None
        #: The compiled FIF gradient (``train.compile``), or ``None`` for eager training.
        self.compiled: Any = None
        #: The run's number of optimiser steps (``None`` if unknown), known once the trainer starts.
        self.total_steps: int | None = None
        #: Estimator context during training steps: the per-step input checks are off (the data were validated once,
        #: before training).
        self.step_context: Any = skip_input_checks

    # ------------------------------------------------------------------ views

    def eval_nets(self, c: Tensor | None = None) -> Any:
        """The nets used for validation and export: the EMA copies when EMA is on (given the labels ``c``)."""
        if self.ema is None:
            return self.flow.given(c)
        m = self.ema.module
        if c is None:
            return _Nets(m["encoder"], m["decoder"], self.flow.latent)
        from ..model import InjectiveFlow as _Flow

        ema = _Flow(m["encoder"], m["decoder"], self.flow.latent, num_classes=self.flow.num_classes)
        return ema.given(c)

    def export_flow(self) -> InjectiveFlow:
        """The trained model, with the EMA weights copied in when EMA is on."""
        if self.ema is not None:
            m = self.ema.module
            self.flow.encoder.load_state_dict(m["encoder"].state_dict())
            self.flow.decoder.load_state_dict(m["decoder"].state_dict())
        return self.flow

    # ------------------------------------------------------------------ loop

    def on_fit_start(self) -> None:
        total = self.trainer.estimated_stepping_batches
        self.total_steps = int(total) if total != float("inf") else None
        device = self.device
        explicit = self.check_finite_every_n_steps
        self._check_every = explicit or (1 if device.type == "cpu" else ACCELERATOR_CHECK_EVERY)
        self._first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        from lightning.pytorch.callbacks import Timer

        self._timer = next((cb for cb in self.trainer.callbacks if isinstance(cb, Timer)), None)

    def on_train_start(self) -> None:
        from .distributed import own_rng_state, process_seed, set_rng_state

        # Restored as late as possible: nothing between here and the first batch draws random numbers.
        if self._rng_to_restore is not None:
            set_rng_state(own_rng_state(self._rng_to_restore, self.seed, self.global_step))
            self._rng_to_restore = None
        elif self.trainer.global_rank > 0:
            # Every process was seeded alike: without this, N processes would draw the same Hutchinson and input
            # noise (K samples, not N·K). Rank 0 keeps the single-process stream.
            torch.manual_seed(process_seed(self.seed, self.trainer.global_rank))

    def budget_progress(self) -> float | None:
        """The spent fraction of ``max_time`` (Lightning's timer, which a resumed run continues), or ``None``."""
        if not self.max_time or self._timer is None:
            return None
        return min(1.0, float(self._timer.time_elapsed("train")) / self.max_time)

    def clock(self) -> Clock:
        """Where training stands now: what the method's schedules read (handed to ``loss``, never stored in it)."""
        return Clock(self.global_step, self.total_steps, self.budget_progress())

    def _split(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(batch, (tuple, list)):
            return batch[0], batch[1]
        return batch, None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        clock = self.clock()
        step = clock.step
        x, c = self._split(batch)
        if self.input_noise > 0:
            x = x + self.input_noise * torch.randn_like(x)
        model = self.flow.given(c)  # the nets in the model's units (the data were scaled once, before training)
        error, grads = None, None
        try:
            with self.step_context():
                if self.compiled is not None:
                    terms, grads = self.compiled(x, clock)
                else:
                    terms = self.method.loss(x, clock, model)
        except ValueError as e:  # a bad batch (the estimators' input checks): a collective stop under DDP
            if self.trainer.world_size == 1:
                raise
            error, terms = f"{type(e).__name__}: {e}", {"loss": torch.full((), float("nan"), device=x.device)}
        if "loss" not in terms:
            raise KeyError(f"method {self.method.name!r} returned no 'loss' term (got {sorted(terms)})")
        loss = terms["loss"].mean()
        self._check_finite(loss, terms, x, step, batch_idx, error)
        self._train_sums.add(terms, x.shape[0])
        if (step + 1) % self.log_every_n_steps == 0:
            self._log_step(terms, clock)
        if batch_idx + 1 == self.trainer.num_training_batches:
            # The epoch's row is written here, before validation and before any end-of-epoch checkpoint, so a run
            # resumed from that checkpoint neither repeats nor loses it.
            self._log_epoch_means("train", self._train_sums, suffix="_epoch")
        if grads is not None:  # the compiled gradient reaches Lightning's backward through a carrier scalar
            from .compile import gradient_carrier

            return gradient_carrier(self.compiled.params, grads)
        return loss

    def _check_finite(self, loss: Tensor, terms: dict[str, Tensor], x: Tensor, step: int, batch_idx: int,
                      error: str | None) -> None:
        bad = ~torch.isfinite(loss)
        self._first_bad_step = torch.where(bad & (self._first_bad_step < 0), step, self._first_bad_step)
        if error is not None and self._pending_error is None:
            self._pending_error = error
        world = self.trainer.world_size
        if (step + 1) % self._check_every and (world > 1 or self._pending_error is None):
            return  # not due: the flag stays on the device (no host synchronisation)
        here = int(self._first_bad_step) >= 0  # the one host read (every step on the CPU, where it is free)
        anywhere = here
        if world > 1:
            # Collective: a rank that stopped alone would leave the others waiting forever in the gradient all-reduce.
            anywhere = bool(self.trainer.strategy.reduce_boolean_decision(here, all=False))
        if not anywhere:
            return
        first, error = int(self._first_bad_step), self._pending_error
        if error is not None:
            cause = f"the batch is bad: {error}"
        elif here:
            names = [k for k, v in terms.items() if not torch.isfinite(v).all()] if first == step else []
            cause = (f"term(s) {', '.join(repr(b) for b in names)} are NaN/inf" if names
                     else "the loss is NaN/inf")
            if not torch.isfinite(x).all():
                rows = torch.nonzero(~torch.isfinite(x).flatten(1).all(1)).flatten()[:5].tolist()
                cause += f"; the batch itself holds NaN/inf (rows {rows})"
            elif not all(torch.isfinite(p).all() for p in self.flow.parameters()):
                cause += ("; the weights are already NaN/inf, so an earlier update went wrong (a NaN/inf gradient or "
                          "an infinite learning rate)")
        else:
            cause = f"another process (of {world}) has a NaN/inf loss or a bad batch"
        causes = self._gather_causes(cause) if world > 1 else [cause]
        where = f"optimiser step {first if first >= 0 else step}"
        if self._check_every > 1 and first >= 0 and first != step:
            where += f" (found at step {step}: the flag is read every {self._check_every} steps)"
        raise NonFiniteLossError(
            f"non-finite loss at {where} (epoch {self.current_epoch}, batch {batch_idx}): {'; '.join(causes)}. "
            f"Training stopped; no checkpoint holds the weights of that step, the last checkpoint is intact. "
            f"Try a lower optim.lr, optim.grad_clip, or a higher method.beta."
        )

    def _gather_causes(self, cause: str) -> list[str]:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return [cause]
        world, rank = dist.get_world_size(), dist.get_rank()
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, cause)
        own = [f"{'this process' if i == rank else 'another process'} (rank {i} of {world}): {c}"
               for i, c in enumerate(gathered) if c and not c.startswith("another process")]
        return own or [cause]

    def _log_step(self, terms: dict[str, Tensor], clock: Clock) -> None:
        step = clock.step
        values = {f"train/{k}_step": float(v.detach().float().mean()) for k, v in terms.items()}
        values.update({f"train/{k}": float(v) for k, v in self.method.weights(clock).items()})
        for i, opt in enumerate(self.trainer.optimizers):
            name = f"lr-{type(opt).__name__}" + (f"-{i}" if i else "")
            values[name] = float(opt.param_groups[0]["lr"])
        self._write_row(values, step)
        pbar = {k.removeprefix("train/").removesuffix("_step"): v for k, v in values.items() if k.endswith("_step")}
        # Straight into the progress bar's dict: Lightning's self.log costs ~10 ms a call on small nets.
        self.trainer.progress_bar_metrics.update(pbar)

    def _write_row(self, values: dict[str, float], step: int) -> None:
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics(values, step=step)

    def _log_epoch_means(self, stage: str, sums: _EpochSums, *, suffix: str) -> None:
        means = sums.means(self.trainer.strategy, self.trainer.world_size)
        sums.reset()
        if not means:
            return
        values = {f"{stage}/{k}{suffix}": v for k, v in means.items()}
        self._write_row({**values, "epoch": float(self.current_epoch)}, self.global_step)
        # Known to the callbacks (best checkpoint, plateau scheduler), written straight into their dict (Lightning's
        # self.log costs ~10 ms a call); written to the loggers above.
        self.trainer.callback_metrics.update({k: torch.tensor(v) for k, v in values.items()})

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Tell the resumable loader how far into the epoch we are (its own count runs ahead by Lightning's prefetch).
        dm = getattr(self.trainer, "datamodule", None)
        batches = getattr(dm, "train_batches", None)
        if batches is not None:
            batches.consumed = batch_idx + 1

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self._ema_update(nn.ModuleDict({"encoder": self.flow.encoder, "decoder": self.flow.decoder}))

    def on_train_epoch_end(self) -> None:
        if self._train_sums.count:  # an epoch cut short by train.max_steps or train.max_time
            self._log_epoch_means("train", self._train_sums, suffix="_epoch")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, c = self._split(batch)
        # Fixed noise per validation batch: comparable across epochs, and the training RNG stream is untouched.
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), self.step_context():
            torch.manual_seed(self.seed * 7919 + batch_idx)
            terms = self.method.loss(x, self.clock(), self.eval_nets(c))
        self._val_sums.add(terms, x.shape[0])

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_means("val", self._val_sums, suffix="")

    # ------------------------------------------------------------------ optimiser

    def configure_optimizers(self) -> Any:
        o = self.optim
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[o.name]
        params = [p for p in self.flow.parameters() if p.requires_grad]
        optimizer = cls(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
        s = o.scheduler
        if s.name == "constant":
            return optimizer
        interval = s.interval or ("epoch" if s.name == "plateau" else "step")
        total = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
        total = int(total)
        if s.name == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=o.lr, total_steps=max(total, 2), **s.options)
        elif s.name == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1), **s.options)
        else:
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **s.options)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": interval, "monitor": s.monitor}}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": interval}}

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from .distributed import gather_rng_states

        # Lightning does not save RNG states; bit-identical resume needs them (input and Hutchinson noise), one per
        # process under DDP (a collective: every process saves a checkpoint together, see Trainer.save_checkpoint).
        states = gather_rng_states()
        checkpoint["injflow_rng"] = {**states[0], "ranks": states} if len(states) > 1 else states[0]
        self.describe_checkpoint(checkpoint)

    def describe_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds what injflow keeps in a checkpoint besides weights and RNG states: the model description, the
        running sums of an interrupted epoch and the CSV row count (no collective: any process may call it)."""
        from ..persistence import CHECKPOINT_FORMAT

        checkpoint["injflow"] = {"format": CHECKPOINT_FORMAT, "version": 1, **self.describe}
        checkpoint["injflow_epoch_sums"] = self._train_sums.state_dict()
        if self.csv_logger is not None:
            checkpoint["injflow_csv_rows"] = self.csv_logger.flush()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("injflow_rng")
        if self.ema is not None:
            self._ema_update.reset()  # the restored counter is read again at the next update
        if "injflow_epoch_sums" in checkpoint:
            self._train_sums.load_state_dict(checkpoint["injflow_epoch_sums"], self.device)
