"""Which models stay resident: a byte-budgeted, single-flight cache with pluggable eviction.

Pure Python (no Ray import) so bench/cache_replay.py can replay traces through the same class.
"""

from .model_cache import Loader, ModelCache
from .policy import DEFAULT_POLICY, POLICIES, EvictionPolicy, make_policy
from .sketch import FrequencySketch
from .stats import CacheStats

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "CacheStats",
    "EvictionPolicy",
    "FrequencySketch",
    "Loader",
    "ModelCache",
    "make_policy",
]
