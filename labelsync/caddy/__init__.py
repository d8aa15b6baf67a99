"""Talking to Caddy: the admin API client (`admin`) and the bundled Caddy child (`embedded`)."""
