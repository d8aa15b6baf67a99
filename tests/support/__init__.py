"""Helpers shared by the test suite: test images, containers, the session Caddy."""
