"""labelsync: Docker labels in, Caddy load-balancer config out."""

__version__ = "0.1.0"
