r"""Progress a person can follow: one line per trial state change, with the elapsed time and the counts.

The trials' own step logs stay in their run folders (``metrics.csv``) and Ray's console output is off; the
driver prints only these lines and, at the end, the summary table (:func:`injflow.sweep.tables.summary_lines`).

Example:
    >>> lines = []
    >>> p = Progress("train", 2, log=lines.append, clock=lambda: 0.0)
    >>> p.started("beta1"); p.finished("beta1", {"sweep/state": "completed", "val/nll": 1.25, "step": 20})
    >>> lines[-1]
    '[sweep train    0.0s] completed  beta1  step 20  val/nll=1.25  (1 of 2 done, 0 running)'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "describe_ray_error"]


def describe_ray_error(text: str) -> str:
    """One line for an error Ray recorded: a dead worker process is said as such; otherwise the last line of the
    traceback (the exception and its message)."""
    if any(mark in text for mark in ("ActorDiedError", "RayActorError", "actor died", "worker died", "WorkerCrashedError")):
        return "the trial's process died (killed, out of memory or preempted)"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error"


class Progress:
    """Prints one line per trial event of one stage (``train`` or ``test``).

    Arguments:
        stage: The stage the lines are about.
        total: How many trials the stage runs.
        log: Where lines go.
        metrics: Which reported metrics a finished trial's line shows (default: every ``val/`` and ``test/`` one, up
            to four).
        clock: Seconds since some origin (tests fix it).
    """

    def __init__(self, stage: str, total: int, *, log: Callable[[str], None] = print,
                 metrics: list[str] | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.stage, self.total, self.log, self.metrics, self.clock = stage, total, log, metrics, clock
        self.t0 = clock()
        self.running: set[str] = set()
        self.done = 0

    def _line(self, event: str, name: str, detail: str = "") -> None:
        counts = f"({self.done} of {self.total} done, {len(self.running)} running)"
        text = f"[sweep {self.stage:<5} {self.clock() - self.t0:6.1f}s] {event:<10} {name}"
        self.log("  ".join(part for part in (text, detail, counts) if part))

    def started(self, name: str) -> None:
        self.running.add(name)
        self._line("started", name)

    def finished(self, name: str, result: dict[str, Any]) -> None:
        """A trial returned: ``result`` is what it reported (``sweep/state``, ``sweep/error``, metrics)."""
        self.running.discard(name)
        self.done += 1
        state = result.get("sweep/state") or "finished"
        if state == "failed":
            self._line("failed", name, str(result.get("sweep/error") or ""))
            return
        keys = self.metrics if self.metrics is not None else [k for k in result if k.startswith(("val/", "test/"))][:4]
        shown = "  ".join(f"{k}={result[k]:.4g}" for k in keys if isinstance(result.get(k), (int, float)))
        step = f"step {result['step']}" if result.get("step") else ""
        self._line(state, name, "  ".join(part for part in (step, shown) if part))

    def errored(self, name: str, error: str, attempts: int) -> None:
        """Ray gave up on a trial after ``attempts`` attempts."""
        self.running.discard(name)
        self.done += 1
        self._line("failed", name, f"{error} (after {attempts} attempt{'s' if attempts != 1 else ''})")

    def restarting(self, name: str, error: str, attempt: int, max_failures: int) -> None:
        """A trial failed and Ray starts it again (it resumes from its last checkpoint)."""
        self.running.discard(name)
        self._line("restarting", name, f"{error}; attempt {attempt} of {max_failures + 1}, from its last checkpoint")
