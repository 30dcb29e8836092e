"""Recipe helpers shared by `fmstack` commands that take `--config` and `--set`."""

from __future__ import annotations

import typer


def parse_overrides(pairs: list[str] | None) -> dict[str, object]:
    """Turn `--set KEY=VALUE` pairs into dotted-key overrides; values are parsed as YAML."""
    import yaml

    overrides: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set {pair!r}: expected KEY=VALUE, e.g. train.max_steps=50")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "not valid YAML"
            raise typer.BadParameter(
                f"--set {pair!r}: the value is {problem}; quote it if it is text, e.g. "
                f"--set '{key.strip()}=\"{value}\"'"
            ) from None
    return overrides
