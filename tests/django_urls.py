"""URLconf for Django tests; the Django adapter's tests fill it in."""

urlpatterns: list[object] = []
