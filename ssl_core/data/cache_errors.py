"""Why the decoded-clip cache (ssl_core/data/clip_cache.py) cannot be used, as exceptions with one-line messages.

Apart from clip_cache so that entry points can catch them without importing PyAV before they parse a config.
"""

from __future__ import annotations

from ssl_core.user_errors import UserError


class CacheError(UserError):
    """The cache cannot be used; with data.cache = auto the run decodes the videos instead, with `on` it stops."""


class CacheTooLarge(CacheError, ValueError):
    """data.cache = on, but the cache would not fit data.cache_budget_gb (or the free disk space)."""


class CacheDamaged(CacheError, ValueError):
    """A cache folder whose files do not match its index.json (truncated, overwritten) or whose index is invalid."""


class CacheOutdated(CacheError, ValueError):
    """A cache folder from an older vidssl: its index.json has no checksums to check the frames against."""


class CacheBuildFailed(CacheError, OSError):
    """Building the cache hit an OSError (a full disk, a quota, no permission); the partial build is removed."""
