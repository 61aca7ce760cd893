#!/usr/bin/env python
"""Django's command-line utility for the example chat project.

python example_apps/django_chat/manage.py runserver 8000
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The project is the `example_apps.django_chat` package: import it from the repo root.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_apps.django_chat.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
