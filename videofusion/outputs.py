"""The results of models, schedulers and pipelines: dataclasses that are also read the way diffusers'
``BaseOutput`` is, so scripts written for diffusers work unchanged: ``out.sample``, ``out["sample"]``,
``out[0]`` (the fields that are set, in order), ``out.keys()``, ``len(out)`` and iteration over the keys."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator


class Output:
    """Base of the output dataclasses (see the module docstring). A field that is None is not set: it is not
    among the keys nor in :meth:`to_tuple`, as in diffusers."""

    def to_tuple(self) -> tuple:
        """The values of the fields that are set (not None), in declaration order."""
        return tuple(getattr(self, name) for name in self.keys())

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return list(self.to_tuple())

    def items(self) -> list[tuple[str, Any]]:
        return list(zip(self.keys(), self.to_tuple()))

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()
