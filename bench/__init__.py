"""labelsync's benchmarks: `make bench` (quick sizes) and `make bench-full`.

Every scenario drives the real code paths: the same Reconciler, core and Caddy admin
client the daemon uses, a real Caddy (the bundled binary) and, where a scenario says
so, real containers on the local Docker engine. Synthetic scenarios feed the loop from
a source object with the same `snapshot()`/`events()` interface as `DockerSource`.
See docs/performance.md for what each scenario measures.
"""
