"""The Django example chat app: settings, URLs and views of a one-app project."""
