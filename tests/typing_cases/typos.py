"""Deliberate mistakes: each line marked `# error` must be reported by mypy and pyright."""

from __future__ import annotations

from fastapi import FastAPI
from flask import Flask
from freeplay import Freeplay
from starlette.applications import Starlette

import freeplay_integrations as fi
from freeplay_integrations import asgi, wsgi
from freeplay_integrations.flask import FreeplaySessions

client = Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api")
app = FastAPI()
app.add_middleware(asgi.FreeplaySessionMiddleware, projet_id="p")  # error
app.add_middleware(asgi.FreeplaySessionMiddleware, on_invalid="rejct")  # error
asgi.FreeplaySessionMiddleware(app=Starlette(), project_id="p")  # error
app.add_middleware(asgi.FreeplaySessionMiddleware.configure(sesion_cookie="c"))  # error
wsgi.FreeplaySessionMiddleware(Flask(__name__).wsgi_app, cookie_max_age="1d")  # error
FreeplaySessions(Flask(__name__), recordng="sync")  # error
fi.record(all_mesages=[{"role": "assistant", "content": "hi"}])  # error
fi.record(all_messages=[{"role": "assistant"}], eval_results={"x": "good"})  # error
