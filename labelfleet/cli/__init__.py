"""The ``labelfleet`` command line. The one place that wires core, orchestrator and workers.

Each command imports what it needs inside its function, so ``labelfleet status``
never imports torch and ``labelfleet --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError

from labelfleet.cli import common, job_cmds, label_cmds, model_cmds
from labelfleet.errors import LabelfleetError

app = typer.Typer(
    name="labelfleet",
    help="Auto-label image datasets: RAM tags -> GroundingDINO boxes -> SAM masks, "
    "locally into SQLite or on a cluster into PostgreSQL. Every option is also an env var LABELFLEET_<NAME>.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.callback()(common.global_options)
label_cmds.register(app)
job_cmds.register(app)
__import__("labelfleet.cli.edit_cmds", fromlist=["register"]).register(app)  # issue 14: edit jobs
app.add_typer(model_cmds.models_app, name="models")
app.add_typer(job_cmds.db_app, name="db")

for _extra in ("labelfleet.cli.cluster_cmds", "labelfleet.cli.review_cmds"):
    try:
        __import__(_extra)
        sys.modules[_extra].register(app)  # type: ignore[attr-defined]
    except ModuleNotFoundError as _exc:
        if _exc.name != _extra:
            raise


def main() -> None:
    """Console-script entry point: clear one-line errors instead of tracebacks."""
    try:
        app()
    except LabelfleetError as exc:
        common.console_err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(2)
    except ValidationError as exc:  # a LABELFLEET_* env var or flag with a bad value
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            common.console_err.print(f"[bold red]error:[/] setting {where} (env LABELFLEET_{where.upper()}): "
                                     f"{err['msg']}, got {err.get('input')!r}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        common.console_err.print("interrupted")
        sys.exit(130)
