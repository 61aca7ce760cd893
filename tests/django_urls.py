"""URLconf for the Django adapter's tests (views in `tests.django_app.views`)."""

from __future__ import annotations

from typing import Any

from django.urls import path

from tests.django_app import views
from tests.django_settings import HAS_DRF

urlpatterns: list[Any] = [
    path("sync/", views.sync_view),
    path("async/", views.async_view),
    path("cbv/sync/", views.SyncClassView.as_view()),
    path("cbv/async/", views.AsyncClassView.as_view()),
    path("signal/sync/", views.sync_signal_view),
    path("signal/async/", views.async_signal_view),
    path("stream/sync/", views.sync_stream_view),
    path("stream/async/", views.async_stream_view),
    path("stream/context/", views.context_stream_view),
    path("error/", views.error_view),
    path("error/async/", views.async_error_view),
    path("expose/", views.expose_view),
    path("health/", views.probe_view),
]

if HAS_DRF:
    from tests.django_app.drf import ChatAPIView

    urlpatterns.append(path("drf/", ChatAPIView.as_view()))
