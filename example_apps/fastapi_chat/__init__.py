"""The FastAPI example chat app: `create_app()` in `app.py`."""
