"""Overload protection and degradation: circuit breaker, timeout, bulkhead, rate limit,
fallback, hedging and the retry budget. One module per decorator; each writes its
decisions once (a plain engine class) and wraps ``def`` and ``async def`` in thin shells.
"""

from __future__ import annotations

from ._breaker import BreakerFunction as BreakerFunction
from ._breaker import BreakerState as BreakerState
from ._breaker import BreakerStats as BreakerStats
from ._breaker import CircuitBreaker as CircuitBreaker
from ._breaker import circuit_breaker as circuit_breaker
from ._budget import RetryBudget as RetryBudget
from ._budget import RetryBudgetStats as RetryBudgetStats
from ._bulkhead import Bulkhead as Bulkhead
from ._bulkhead import BulkheadFunction as BulkheadFunction
from ._bulkhead import BulkheadStats as BulkheadStats
from ._bulkhead import bulkhead as bulkhead
from ._fallback import fallback as fallback
from ._hedge import HedgedFunction as HedgedFunction
from ._hedge import Hedger as Hedger
from ._hedge import HedgeStats as HedgeStats
from ._hedge import hedge as hedge
from ._rate_limit import RateLimitedFunction as RateLimitedFunction
from ._rate_limit import RateLimiter as RateLimiter
from ._rate_limit import RateLimiterStats as RateLimiterStats
from ._rate_limit import rate_limit as rate_limit
from ._timeout import timeout as timeout
