"""The Flask example chat app: `create_app()` in `app.py`."""
