"""URLs of the Django example chat."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("", views.page),
    path("static/<str:name>", views.static),
    path("healthz", views.healthz),
    path("api/conversation", views.conversation),
    path("api/chat", views.chat_turn),
    path("api/new", views.new_conversation),
    path("api/feedback", views.feedback),
]
