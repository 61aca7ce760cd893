"""Settings of the Django example chat (a project with no database and no models).

Freeplay's API key, base URL and project ID come from the `FREEPLAY_API_KEY`,
`FREEPLAY_API_BASE` and `FREEPLAY_PROJECT_ID` environment variables (`make demo-django`
points them at the local Freeplay server); the `FREEPLAY` dict below holds the rest.
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-chat-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "freeplay_integrations.django",  # system checks of the FREEPLAY setting
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Binds the conversation's session for each request, its streamed body included.
    "freeplay_integrations.django.FreeplaySessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # A real app also keeps CsrfViewMiddleware; this demo's JSON API has no forms or login.
]
FREEPLAY = {
    "EXCLUDE_PATHS": ["/static/", "/healthz"],
    "SESSION_METADATA": "example_apps.django_chat.views.session_metadata",
}
#: The example chat's own settings: `RESPONDER` (a `Responder`, default: from the
#: environment) and `FREEPLAY_UI` (the local Freeplay page, linked from the chat).
CHAT = {
    "RESPONDER": None,
    "FREEPLAY_UI": os.environ.get("DEMO_FREEPLAY_UI"),
}

ROOT_URLCONF = "example_apps.django_chat.urls"
WSGI_APPLICATION = "example_apps.django_chat.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"freeplay_integrations": {"handlers": ["console"], "level": "INFO"}},
}
