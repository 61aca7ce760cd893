"""WSGI entry point of the Django example chat (what `runserver` serves)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_apps.django_chat.settings")
application = get_wsgi_application()
