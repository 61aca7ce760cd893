"""Hypothesis profiles for the hostile-input tests, picked by `HYPOTHESIS_PROFILE`.

- `default` (what `make test` runs): a few hundred examples per property, seconds in all.
- `dedicated`: 10,000 examples per property, for the long run::

      HYPOTHESIS_PROFILE=dedicated .venv/bin/pytest tests/test_fuzz.py tests/test_signing.py -q

Importing this module registers both and loads the one the environment names.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["DEDICATED_EXAMPLES", "DEFAULT_EXAMPLES", "PROFILE", "PROFILE_ENV", "examples"]

PROFILE_ENV = "HYPOTHESIS_PROFILE"
DEFAULT_EXAMPLES = 150
DEDICATED_EXAMPLES = 10_000

settings.register_profile("default", max_examples=DEFAULT_EXAMPLES, deadline=None)
settings.register_profile(
    "dedicated",
    max_examples=DEDICATED_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = os.environ.get(PROFILE_ENV, "default")
settings.load_profile(PROFILE)


def examples() -> int:
    """How many examples a property gets under the loaded profile (for plain loops too)."""
    return settings.default.max_examples
