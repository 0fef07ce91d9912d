"""HTTP edge: Litestar controllers, auth guards and the one error mapping."""
