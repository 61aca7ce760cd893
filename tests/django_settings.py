"""Django settings for the test suite (pytest-django's DJANGO_SETTINGS_MODULE).

The project as a user would set it up: the app for system checks, the middleware right
after SecurityMiddleware, and a `FREEPLAY` dict. Tests point `FREEPLAY` at the local
Freeplay server through pytest-django's `settings` fixture (`override_settings`).
"""

from __future__ import annotations

import importlib.util

SECRET_KEY = "freeplay-integrations-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "freeplay_integrations.django",
]
HAS_DRF = importlib.util.find_spec("rest_framework") is not None
if HAS_DRF:
    INSTALLED_APPS.append("rest_framework")
    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": [],
        "DEFAULT_PERMISSION_CLASSES": [],
        "UNAUTHENTICATED_USER": None,
    }
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "freeplay_integrations.django.FreeplaySessionMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "tests.django_urls"
# A valid configuration that records nowhere (sessions are created without any network
# call); tests that check recordings point it at the local Freeplay server.
FREEPLAY = {
    "API_KEY": "test-key",
    "API_BASE": "http://127.0.0.1:9/api",
    "PROJECT_ID": "7e570000-0000-4000-8000-000000007e57",
}
