"""Settings' derived values: durations parsed once per text, and right after a SIGHUP copy."""

from __future__ import annotations

from labelsync.settings import Settings, seconds


def test_durations_are_parsed_once_per_text() -> None:
    settings = Settings(debounce="73ms", debounce_max="730ms", resync_interval="7s")
    seconds.cache_clear()
    for _ in range(100):
        assert settings.debounce_seconds == 0.073
        assert settings.debounce_max_seconds == 0.73
        assert settings.resync_seconds == 7.0
    info = seconds.cache_info()
    assert (info.misses, info.hits) == (3, 297)


def test_a_reloaded_copy_reads_its_own_durations() -> None:
    """SIGHUP merges with model_copy(update=...): nothing cached may carry over."""
    settings = Settings(debounce="50ms")
    assert settings.debounce_seconds == 0.05
    merged = settings.model_copy(update={"debounce": "20ms"})
    assert merged.debounce_seconds == 0.02
    assert settings.debounce_seconds == 0.05
