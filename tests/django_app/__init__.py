"""Views, URLs and server helpers for the Django adapter's tests."""
