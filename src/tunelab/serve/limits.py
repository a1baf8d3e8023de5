"""Per-key limits: requests per minute (a sliding window in memory) and tokens per day (from the ledger)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from tunelab.serve.protocol import ApiError
from tunelab.serve.store import ApiKey, Store


class Limiter:
    """Per-key requests per minute (sliding window, in memory) and tokens per day (from the ledger)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.windows: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def check(self, key: ApiKey, retry_after: int) -> None:
        t = time.time()
        if key.rpm is not None:
            with self.lock:
                w = self.windows[key.id]
                while w and w[0] <= t - 60:
                    w.popleft()
                if len(w) >= key.rpm:
                    wait = max(1, int(60 - (t - w[0])) + 1)
                    raise ApiError(
                        429,
                        f"rate limit reached: {key.rpm} requests per minute",
                        type="rate_limit_exceeded",
                        code="rate_limit_exceeded",
                        headers={"Retry-After": str(wait)},
                    )
                w.append(t)
        if key.tokens_per_day is not None and self.store.tokens_since(key.id, t - 86400) >= key.tokens_per_day:
            raise ApiError(
                429,
                f"token limit reached: {key.tokens_per_day} tokens per day",
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry_after * 30)},
            )
