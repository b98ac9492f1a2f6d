"""asyncembed: an asyncio-first batching client for OpenRouter-compatible embeddings APIs."""

from ._cache import Cache as Cache
from ._clock import Clock as Clock
from ._codec import Embeddings as Embeddings
from ._config import Batching as Batching
from ._config import Limits as Limits
from ._config import Retry as Retry
from ._config import Timeouts as Timeouts
from ._embedder import Embedder as Embedder
from ._exceptions import APIConnectionError as APIConnectionError
from ._exceptions import APIStatusError as APIStatusError
from ._exceptions import APITimeoutError as APITimeoutError
from ._exceptions import AsyncEmbedError as AsyncEmbedError
from ._exceptions import AuthenticationError as AuthenticationError
from ._exceptions import BadGatewayError as BadGatewayError
from ._exceptions import BadRequestError as BadRequestError
from ._exceptions import BudgetExceededError as BudgetExceededError
from ._exceptions import EmbedderClosedError as EmbedderClosedError
from ._exceptions import GatewayTimeoutError as GatewayTimeoutError
from ._exceptions import InputTooLongError as InputTooLongError
from ._exceptions import InternalServerError as InternalServerError
from ._exceptions import InvalidInputError as InvalidInputError
from ._exceptions import LimiterUnavailableError as LimiterUnavailableError
from ._exceptions import MissingExtraError as MissingExtraError
from ._exceptions import NotFoundError as NotFoundError
from ._exceptions import PartialResultError as PartialResultError
from ._exceptions import PayloadTooLargeError as PayloadTooLargeError
from ._exceptions import PaymentRequiredError as PaymentRequiredError
from ._exceptions import PermissionDeniedError as PermissionDeniedError
from ._exceptions import ProtocolError as ProtocolError
from ._exceptions import ProviderOverloadedError as ProviderOverloadedError
from ._exceptions import RateLimitError as RateLimitError
from ._exceptions import RequestTimeoutError as RequestTimeoutError
from ._exceptions import ServiceUnavailableError as ServiceUnavailableError
from ._exceptions import StoreError as StoreError
from ._exceptions import UnprocessableEntityError as UnprocessableEntityError
from ._limiter import Limiter as Limiter
from ._limiter import Reservation as Reservation
from ._models import EmbeddingRequest as EmbeddingRequest
from ._models import EmbeddingResponse as EmbeddingResponse
from ._models import MaxPrice as MaxPrice
from ._models import Percentiles as Percentiles
from ._models import ProviderPreferences as ProviderPreferences
from ._models import ProviderSort as ProviderSort
from ._models import Usage as Usage
from ._redis_limiter import RedisLimiter as RedisLimiter
from ._stats import Stats as Stats
from ._sync import SyncEmbedder as SyncEmbedder
from ._transport import RawResponse as RawResponse
from ._transport import Transport as Transport
from ._version import __version__ as __version__

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncEmbedError",
    "AuthenticationError",
    "BadGatewayError",
    "BadRequestError",
    "Batching",
    "BudgetExceededError",
    "Cache",
    "Clock",
    "Embedder",
    "EmbedderClosedError",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "Embeddings",
    "GatewayTimeoutError",
    "InputTooLongError",
    "InternalServerError",
    "InvalidInputError",
    "Limiter",
    "LimiterUnavailableError",
    "Limits",
    "MaxPrice",
    "MissingExtraError",
    "NotFoundError",
    "PartialResultError",
    "PayloadTooLargeError",
    "PaymentRequiredError",
    "Percentiles",
    "PermissionDeniedError",
    "ProtocolError",
    "ProviderOverloadedError",
    "ProviderPreferences",
    "ProviderSort",
    "RateLimitError",
    "RawResponse",
    "RedisLimiter",
    "RequestTimeoutError",
    "Reservation",
    "Retry",
    "ServiceUnavailableError",
    "Stats",
    "StoreError",
    "SyncEmbedder",
    "Timeouts",
    "Transport",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
]

# Show public classes as `asyncembed.X` in reprs and tracebacks (as httpx does).
for _name in __all__:
    if not _name.startswith("_"):
        _obj = globals()[_name]
        if hasattr(_obj, "__module__"):
            _obj.__module__ = "asyncembed"
del _name, _obj
