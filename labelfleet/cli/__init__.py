"""The ``labelfleet`` command line. The one place that wires core, orchestrator and workers.

Each command imports what it needs inside its function, so ``labelfleet status``
never imports torch and ``labelfleet --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from labelfleet.cli import common, job_cmds, label_cmds, model_cmds

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

for _extra in ("labelfleet.cli.cluster_cmds", "labelfleet.cli.review_cmds", "labelfleet.cli.deadletter_cmds",
               "labelfleet.cli.health_cmds", "labelfleet.cli.failures_cmds"):
    try:
        __import__(_extra)
        sys.modules[_extra].register(app)  # type: ignore[attr-defined]
    except ModuleNotFoundError as _exc:
        if _exc.name != _extra:
            raise


def main() -> None:
    """Console-script entry point: one clear line and exit 2 for every user/environment error."""
    from labelfleet.cli.errors import run_cli

    run_cli(app)
