"""The HTTP layer: Litestar app, controllers, client identity, error shapes."""
