"""Model stages (need torch): GroundingDINO, SAM, RAM; built through :mod:`workers.stages.registry`."""
