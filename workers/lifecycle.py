"""Worker start and health: models load when a pool process starts, a sick worker stops and exits non-zero.

* Every prefork pool process loads the models of the presets its worker serves
  (``worker_process_init``: before it takes any task, outside every task time
  limit), then writes ``ready`` and keeps touching ``alive`` (:mod:`workers.health`).
* A pool process that cannot load its models, or whose device faults later
  (:class:`~labelfleet.errors.WorkerUnhealthy`), writes ``unhealthy`` and sends
  SIGUSR2 to the worker's main process, which stops consuming (warm shutdown:
  other tasks finish) and exits with status 1, so its supervisor restarts it.
  Tasks it still receives go back to the queue untouched.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

from celery import signals

from labelfleet import fleet
from labelfleet.models.catalog import PRESETS
from labelfleet.settings import Settings
from labelfleet.tasknames import QUEUE_PREFIX
from workers.celery_app import app
from workers.health import AliveTicker, HealthFiles

logger = logging.getLogger(__name__)
#: Set by ``labelfleet worker``: the queues this worker consumes (hence the presets it preloads).
QUEUES_ENV = "LABELFLEET_WORKER_QUEUES"
#: Exit status of a worker that stopped because it is unhealthy.
EXIT_UNHEALTHY = 1
# Loading real models takes longer than Celery's 4 s wait for a new pool process.
app.conf.worker_proc_alive_timeout = 1800.0


def worker_presets(settings: Settings) -> list[str]:
    """The presets whose queues this worker consumes (``lf.<preset>``), else ``settings.models``."""
    queues = _queues()
    names = [q[len(QUEUE_PREFIX):] for q in queues if q.startswith(QUEUE_PREFIX)]
    return [n for n in names if n in PRESETS] or [settings.models]


_exit_status = 0


def exit_status() -> int:
    """After the worker stopped: :data:`EXIT_UNHEALTHY` if it stopped because it is unhealthy, else 0.

    (``app.worker_main`` does not return Celery's exit code, so ``labelfleet worker`` asks here.)
    """
    return _exit_status


def _on_child_unhealthy(signum: int, frame: Any) -> None:
    """Main process, on SIGUSR2 from a pool process: warm shutdown with a failure status."""
    from celery.worker import state

    global _exit_status
    _exit_status = EXIT_UNHEALTHY
    state.should_stop = EXIT_UNHEALTHY
    os.write(2, b"labelfleet worker: a pool process is unhealthy; stopping, exit status 1\n")


#: Set in the main process at worker start: the Celery node name (pool processes inherit it).
NODE_ENV = "LABELFLEET_WORKER_NODE"


@signals.worker_init.connect
def _worker_init(sender: Any = None, **_: Any) -> None:
    """Main process, before the pool starts: clear old health files, listen for unhealthy pool processes."""
    HealthFiles(Settings().health_dir).reset()
    node = getattr(sender, "hostname", None)
    if node:
        os.environ[NODE_ENV] = str(node)
    signal.signal(signal.SIGUSR2, _on_child_unhealthy)


def _queues() -> list[str]:
    return [q.strip() for q in os.environ.get(QUEUES_ENV, "").split(",") if q.strip()]


@signals.worker_process_init.connect
def _process_init(**_: Any) -> None:
    """Pool process start: load the models now; report ready, or unhealthy with the reason."""
    from workers.service import context

    ctx = context()
    files = HealthFiles(ctx.settings.health_dir)

    broker_url = ctx.settings.broker_url.get_secret_value()
    node = os.environ.get(NODE_ENV) or f"worker@{socket.gethostname()}"

    def unhealthy(reason: str) -> None:
        files.mark_unhealthy(reason)
        fleet.record_unhealthy(broker_url, node, reason, _queues())  # `status --json` lists it
        os.kill(os.getppid(), signal.SIGUSR2)

    ctx.on_unhealthy = unhealthy
    try:
        for preset in worker_presets(ctx.settings):
            ctx.preload(preset)
    except Exception as exc:
        ctx.report_unhealthy(getattr(exc, "message", None) or f"cannot load models: {type(exc).__name__}: {exc}")
        return
    files.mark_ready()
    fleet.clear(broker_url, node)
    AliveTicker(files).start()
    logger.info("models loaded (%s); ready", ", ".join(worker_presets(ctx.settings)))
