"""`python -m freeplay_integrations.local`: run the local Freeplay server."""

from __future__ import annotations

from . import main

raise SystemExit(main())
