"""How the real services start: the local stack here, production manifests beside it."""
