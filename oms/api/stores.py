"""Store staff API (issue: store operations). Route handlers are listed in ROUTES."""

ROUTES: list = []
