"""Ops dashboard, summary and metrics (issue: ops dashboard). Route handlers are listed in ROUTES."""

ROUTES: list = []
