"""A Django REST framework view (imported only when DRF is installed)."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from freeplay_integrations import new_session, record

from .views import MESSAGES, seen


class ChatAPIView(APIView):
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # DRF's Request forwards attribute access to Django's HttpRequest, so
        # request.freeplay_session is there too.
        before = seen(request)  # type: ignore[arg-type]
        if request.data.get("new"):
            new_session()
        completion_id = record(all_messages=MESSAGES, inputs={}).completion_id
        after = seen(request)  # type: ignore[arg-type]
        return Response({"before": before, "after": after, "completion_id": completion_id})
