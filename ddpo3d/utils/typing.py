"""Type annotations shared across the project (threestudio's ``utils/typing.py`` convention).

Tensor shapes are written with jaxtyping, e.g. ``Float[Tensor, "B H W 3"]``.
"""

from typing import (  # noqa: F401
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Literal,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from jaxtyping import Bool, Float, Int, Integer, Num, Shaped  # noqa: F401
from omegaconf import DictConfig, ListConfig  # noqa: F401
from torch import Tensor  # noqa: F401
