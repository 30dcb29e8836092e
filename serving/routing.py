"""Routing policies as pure functions: which variant answers, when a cascade escalates, and
which requests are mirrored to a shadow. The ingress calls these; tests call them directly."""

from __future__ import annotations

import random
from collections.abc import Sequence

from serving.config import RouteConfig, ServeConfig

AUTO = "auto"


class UnknownVariant(LookupError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(
            f"model: unknown variant '{name}'; use one of {', '.join(known)} or 'auto'"
        )


def default_route(config: ServeConfig, endpoint: str, tasks: dict[str, str]) -> RouteConfig:
    """The endpoint's configured route, else `fixed` on the first variant that can serve it."""
    if endpoint in config.routes:
        return config.routes[endpoint]  # type: ignore[index]
    wanted = {"classify": ("classification",), "generate": ("causal_lm",)}.get(endpoint)
    for name, task in tasks.items():
        if wanted is None or task in wanted:
            return RouteConfig(policy="fixed", variant=name)
    return RouteConfig(policy="fixed", variant=next(iter(config.variants)))


def pick_variant(
    route: RouteConfig, requested: str | None, known: Sequence[str], rng: random.Random
) -> str:
    """The variant that answers first: the one the request names, else the route's choice.

    For `cascade` this is the first variant asked; `needs_fallback` decides on escalation.
    """
    if requested and requested != AUTO:
        if requested not in known:
            raise UnknownVariant(requested, known)
        return requested
    if route.policy == "weighted":
        names = list(route.weights)
        return rng.choices(names, weights=[route.weights[n] for n in names])[0]
    assert route.variant is not None  # the config validator guarantees it
    return route.variant


def needs_fallback(route: RouteConfig, requested: str | None, top_probability: float) -> bool:
    """Whether a cascade asks its fallback: only on `auto` requests, when the first variant's
    top class probability is below the threshold."""
    return (
        route.policy == "cascade"
        and (not requested or requested == AUTO)
        and top_probability < route.threshold
    )


def should_shadow(route: RouteConfig, answered_by: str, rng: random.Random) -> bool:
    """Whether to mirror this request to the route's shadow variant (never to itself)."""
    shadow = route.shadow
    return bool(shadow) and shadow.variant != answered_by and rng.random() < shadow.sample  # type: ignore[union-attr]
