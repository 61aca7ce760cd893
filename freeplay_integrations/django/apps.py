"""The `freeplay_integrations.django` app: add it to `INSTALLED_APPS` for its system checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks

from .checks import check_middleware, check_settings

__all__ = ["FreeplayConfig"]


class FreeplayConfig(AppConfig):
    name = "freeplay_integrations.django"
    label = "freeplay_integrations"
    verbose_name = "Freeplay sessions"

    def ready(self) -> None:
        # `ready()` runs once per process; registering the same function twice is a no-op.
        checks.register(check_settings)
        checks.register(check_middleware)
