"""Django settings for the test suite (pytest-django's DJANGO_SETTINGS_MODULE)."""

SECRET_KEY = "freeplay-integrations-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.django_urls"
