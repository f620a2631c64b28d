"""Stop requests: a signal asks the run to checkpoint at the next step boundary, then stop."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from pcamflow.errors import EXIT_PREEMPTED, Preempted

log = logging.getLogger(__name__)


class StopRequest:
    """Set by SIGTERM/SIGUSR1 (Slurm's warning before a time limit or preemption) and by SIGINT
    (Ctrl-C, in a terminal or of a local workflow): each checkpoints, then stops. A second Ctrl-C
    stops at once, without waiting for the checkpoint."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self):
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        previous = {}
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        # only set a flag here: the loop checkpoints at the next step boundary and stops
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # Ctrl-C twice: the user does not want to wait
        if signum == signal.SIGINT:
            log.warning("Ctrl-C: checkpointing at the next step, then stopping (Ctrl-C again to stop now)")
        self.signal_name = signal.Signals(signum).name

    def stopping(self, where: str) -> Preempted:
        """Log the stop and return the exception to raise once the checkpoint is written."""
        log.warning(
            "%s received: checkpointed %s; exiting %d so a retry resumes",
            self.signal_name,
            where,
            EXIT_PREEMPTED,
        )
        return Preempted(f"{self.signal_name}: checkpointed {where}; run again to resume")
