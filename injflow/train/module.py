r"""The one training engine: a Lightning module joining an :class:`InjectiveFlow` and a method.

Per optimiser step it (1) adds Gaussian noise of std ``input_noise`` to the batch (FIF trains with
σ = 0.01, App. E.2), (2) asks the method for its loss terms, (3) stops with
:class:`NonFiniteLossError` naming the step and the term if the loss is not finite — before the optimiser
touches the weights, so the last checkpoint stays good — and (4) logs the mean of every term and every
scheduled weight. Validation evaluates the same terms without input noise, with fixed seeds (so the
Hutchinson noise is the same every epoch and the training RNG stream is untouched), optionally with
EMA weights.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from ..methods import Method
from .config import OptimConfig
from .model import InjectiveFlow

__all__ = ["FlowModule", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the optimiser step and the offending term(s)."""


class _Nets:
    """What a method sees: ``encode``, ``decode`` and ``latent`` (possibly the EMA copies of the nets)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: nn.Module):
        self.encoder, self.decoder, self.latent = encoder, decoder, latent

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)


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
    ):
        super().__init__()
        self.flow = flow
        self.method = method
        self.optim = optim or OptimConfig()
        self.input_noise = float(input_noise)
        self.seed = int(seed)
        self.ema: nn.Module | None = None
        if ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            nets = nn.ModuleDict({"encoder": flow.encoder, "decoder": flow.decoder})
            self.ema = AveragedModel(nets, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)
        self._rng_to_restore: dict[str, Any] | None = None

    # ------------------------------------------------------------------ views

    def eval_nets(self) -> _Nets:
        """The nets used for validation and export: the EMA copies when EMA is on."""
        if self.ema is not None:
            m = self.ema.module
            return _Nets(m["encoder"], m["decoder"], self.flow.latent)
        return _Nets(self.flow.encoder, self.flow.decoder, self.flow.latent)

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
        self.method.total_steps = int(total) if total != float("inf") else None

    def _log_terms(self, stage: str, terms: dict[str, Tensor], batch_size: int, on_step: bool) -> None:
        values = {f"{stage}/{k}": v.detach().float().mean() for k, v in terms.items()}
        self.log_dict(
            values, on_step=on_step, on_epoch=True, prog_bar=False, batch_size=batch_size, sync_dist=not on_step
        )
        # The progress bar shows the step values of the training terms.
        if on_step:
            self.log_dict({k.split("/", 1)[1]: v for k, v in values.items()}, on_step=True, on_epoch=False,
                          prog_bar=True, logger=False, batch_size=batch_size)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        step = self.global_step
        x = batch
        if self.input_noise > 0:
            x = x + self.input_noise * torch.randn_like(x)
        terms = self.method.loss(x, step, self.flow)
        if "loss" not in terms:
            raise KeyError(f"method {self.method.name!r} returned no 'loss' term (got {sorted(terms)})")
        loss = terms["loss"].mean()
        here = not bool(torch.isfinite(loss))
        anywhere = here
        if self.trainer.world_size > 1:
            # Collective: a rank that stopped alone would leave the others waiting forever in the gradient all-reduce.
            anywhere = bool(self.trainer.strategy.reduce_boolean_decision(here, all=False))
        if anywhere:
            bad = [k for k, v in terms.items() if not torch.isfinite(v).all()]
            where = (f"term(s) {', '.join(repr(b) for b in bad)} are NaN/inf" if here
                     else f"another process (of {self.trainer.world_size}) has a NaN/inf loss")
            raise NonFiniteLossError(
                f"non-finite loss at optimiser step {step} (epoch {self.current_epoch}, batch {batch_idx}): "
                f"{where}. Training stopped before the update; "
                f"the last checkpoint is intact. Try a lower optim.lr, optim.grad_clip, or a higher method.beta."
            )
        self._log_terms("train", terms, x.shape[0], on_step=True)
        weights = self.method.weights(step)
        if weights:
            self.log_dict({f"train/{k}": float(v) for k, v in weights.items()}, on_step=True, on_epoch=False)
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Tell the resumable loader how far into the epoch we are (its own count runs ahead by Lightning's prefetch).
        dm = getattr(self.trainer, "datamodule", None)
        batches = getattr(dm, "train_batches", None)
        if batches is not None:
            batches.consumed = batch_idx + 1

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(nn.ModuleDict({"encoder": self.flow.encoder, "decoder": self.flow.decoder}))

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        # Fixed noise per validation batch: comparable across epochs, and the training RNG stream is untouched.
        devices = [batch.device] if batch.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(self.seed * 7919 + batch_idx)
            terms = self.method.loss(batch, self.global_step, self.eval_nets())
        self._log_terms("val", {k: v.detach() for k, v in terms.items()}, batch.shape[0], on_step=False)

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
        if total == float("inf"):
            raise ValueError(f"optim.scheduler.name={s.name!r} needs a finite run length (train.max_epochs or train.max_steps)")
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
        # Lightning does not save RNG states; bit-identical resume needs them (input and Hutchinson noise).
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["injflow_rng"] = rng

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("injflow_rng")

    def on_train_start(self) -> None:
        # Restored as late as possible: nothing between here and the first batch draws random numbers.
        if self._rng_to_restore is not None:
            torch.set_rng_state(self._rng_to_restore["torch"])
            if "cuda" in self._rng_to_restore and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._rng_to_restore["cuda"])
            self._rng_to_restore = None
