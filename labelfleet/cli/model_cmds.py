"""``labelfleet models list|fetch|verify``: the model cache."""

from __future__ import annotations

import typer
from rich.table import Table

from labelfleet.cli.common import console, make_settings
from labelfleet.errors import ConfigError
from labelfleet.models.catalog import MODELS, PRESETS, ModelSpec

models_app = typer.Typer(help="Model weights: list, download into the cache, verify checksums.",
                         no_args_is_help=True)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1000
    return f"{n} B"


def _specs(names: list[str]) -> list[ModelSpec]:
    """Expand preset names and model keys into model specs (deduplicated)."""
    keys: list[str] = []
    for name in names or ["default"]:
        if name in PRESETS:
            p = PRESETS[name]
            keys += [p.tagger, p.detector, p.segmenter]
        elif name in MODELS:
            keys.append(name)
        else:
            raise ConfigError(f"unknown model or preset {name!r}; presets: {', '.join(PRESETS)}; "
                              f"models: {', '.join(MODELS)}")
    return [MODELS[k] for k in dict.fromkeys(keys)]


@models_app.command("list")
def list_models() -> None:
    """Show every known model with its size and whether it is in the cache."""
    settings = make_settings()
    table = Table("model", "stage", "size", "cached", "description")
    for spec in MODELS.values():
        if spec.generated:
            cached = (settings.model_path / "tiny-random" / spec.key / "files.txt").exists()
            size = "generated"
        else:
            cached = all((settings.model_path / f.filename).exists() for f in spec.files)
            size = _human(spec.size)
        table.add_row(spec.key, spec.stage, size, "yes" if cached else "no", spec.description)
    console.print(table)
    console.print("presets: " + "; ".join(f"[bold]{p.name}[/] = {p.description}" for p in PRESETS.values()))
    console.print(f"cache: {settings.model_path} (env LABELFLEET_MODEL_DIR)")


@models_app.command("fetch")
def fetch(names: list[str] = typer.Argument(None, help="Presets or model keys (default: the default preset).")
          ) -> None:
    """Download models into the cache (resumable; sha256 checked). tiny-* models are generated."""
    from labelfleet.cli.label_cmds import _download_bar
    from workers.models import resolve_model

    settings = make_settings()
    for spec in _specs(names or []):
        res = resolve_model(spec.key, spec.stage, settings, progress=_download_bar())
        console.print(f"[green]ok[/] {spec.key}: {res.files.get('checkpoint')}")


@models_app.command("verify")
def verify_cmd(names: list[str] = typer.Argument(None, help="Presets or model keys (default: all cached).")) -> None:
    """Check size and sha256 of cached model files against the pinned values."""
    from labelfleet.models.download import verify

    settings = make_settings()
    specs = _specs(names) if names else [m for m in MODELS.values() if not m.generated]
    bad = 0
    for spec in specs:
        for mf in spec.files:
            path = settings.model_path / mf.filename
            if not names and not path.exists():
                continue
            reason = verify(mf, path)
            bad += reason is not None
            note = reason or ("" if mf.sha256 else "(config file pinned by the repository revision; no sha256)")
            console.print(f"{'[green]ok[/]' if reason is None else '[red]BAD[/]'} {mf.filename} {note}")
    if bad:
        raise typer.Exit(1)
