"""Type hints for sluice._sluice, the compiled part of sluice."""

import asyncio
from typing import (List, Literal, Mapping, NotRequired, Optional, Sequence, Tuple, TypedDict,
                    Union)

# A limit: "30/hour", "10/1m", "2/500ms", "10 per minute", or (count, seconds).
Limit = Union[str, Tuple[int, float]]
Algorithm = Literal["sliding_log", "sliding_counter", "gcra"]
FailureMode = Literal["allow", "deny", "local"]
Key = Union[str, bytes]

class PolicySpec(TypedDict):
    """A policy: its limit, and optionally algorithm, failure mode, shadow and deny cache."""

    limit: Limit
    algorithm: NotRequired[Algorithm]
    on_failure: NotRequired[FailureMode]
    shadow: NotRequired[bool]
    deny_cache: NotRequired[bool]

class StoreError(Exception):
    """The store failed and nothing decided in its place."""

    code: str

class UnknownPolicyError(LookupError):
    """No policy has that name."""

    code: str

class Decision:
    """The answer to "may this key spend this much now?". Immutable."""

    def __init__(
        self,
        *,
        allowed: bool,
        limit: int,
        remaining: int,
        retry_after: float = 0.0,
        reset_after: float = 0.0,
        fallback: Optional[FailureMode] = None,
        shadow: bool = False,
    ) -> None: ...
    @property
    def allowed(self) -> bool: ...
    @property
    def limit(self) -> int: ...
    @property
    def remaining(self) -> int: ...
    @property
    def retry_after(self) -> float: ...
    @property
    def reset_after(self) -> float: ...
    @property
    def fallback(self) -> Optional[FailureMode]: ...
    @property
    def shadow(self) -> bool: ...
    def __bool__(self) -> bool: ...
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class Limiter:
    """Named policies bound to a store. Thread-safe."""

    def __init__(
        self,
        store: str = "memory://",
        policies: Optional[Mapping[str, Union[Limit, PolicySpec]]] = None,
    ) -> None: ...
    @property
    def store(self) -> str: ...
    def limit(self, policy: Limit) -> Tuple[int, float]: ...
    def acquire(self, policy: Limit, key: Key, cost: int = 1) -> Decision: ...
    def peek(self, policy: Limit, key: Key, cost: int = 1) -> Decision: ...
    def reset(self, policy: Limit, key: Key) -> None: ...
    def refund(self, policy: Limit, key: Key, cost: int) -> Decision: ...
    def acquire_all(
        self,
        items: Sequence[Union[Tuple[Limit, Key], Tuple[Limit, Key, int]]],
    ) -> List[Decision]: ...
    def acquire_async(
        self, policy: Limit, key: Key, cost: int = 1
    ) -> "asyncio.Future[Decision]": ...
    def peek_async(
        self, policy: Limit, key: Key, cost: int = 1
    ) -> "asyncio.Future[Decision]": ...

def parse_limit(limit: Limit) -> Tuple[int, float]: ...
