"""``python -m labelfleet`` runs the CLI."""

from labelfleet.cli import main

main()
