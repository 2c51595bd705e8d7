"""Real servers for tests: a scripted webhook receiver and a small static file server."""
