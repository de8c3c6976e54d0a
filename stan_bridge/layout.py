"""Where each Stan variable sits in the flat vectors the compiled model returns.

Stan's ``write_array`` returns parameters, then transformed parameters,
then generated quantities, each flattened column-major. A
:class:`VariableLayout` records the names, shapes, offsets and widths, and
turns flat rows back into arrays of the program's shapes
(:meth:`VariableLayout.split`) or into CmdStan's scalar names
(:meth:`VariableLayout.flat_names`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["VariableLayout", "reshape_rows"]


def reshape_rows(block: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``(n, prod(shape))`` column-major rows -> ``(n, *shape)``.

    Parameters
    ----------
    block : ndarray
        One variable's columns of ``n`` flat rows, in Stan's (column-major) order.
    shape : tuple of int
        The variable's shape in the program.

    Returns
    -------
    ndarray
        ``(n, *shape)``.

    Examples
    --------
    >>> import numpy as np
    >>> from stan_bridge.layout import reshape_rows
    >>> reshape_rows(np.array([[1.0, 2.0, 3.0, 4.0]]), (2, 2))[0]
    array([[1., 3.],
           [2., 4.]])
    """
    n = block.shape[0]
    if not shape:
        return block.reshape(n)
    arr = block.reshape((n, *shape[::-1]))
    return arr.transpose((0, *range(len(shape), 0, -1)))


@dataclass(frozen=True)
class VariableLayout:
    """Names, shapes and positions of a program's variables in Stan's flat output.

    Attributes
    ----------
    params, tparams, gqs : tuple of str
        Parameters, transformed parameters and generated quantities, in
        declaration order.
    shapes : dict
        ``name -> shape`` for all of them.
    offsets : dict
        ``name -> (start, stop)`` columns in a row holding all three blocks.

    Examples
    --------
    >>> from stan_bridge.layout import VariableLayout
    >>> layout = VariableLayout.from_names(
    ...     {"mu": (), "theta": (2,), "y_rep": (3,)}, ["mu"], ["theta"], ["y_rep"])
    >>> layout.width(include_tp=True, include_gq=False), layout.offsets["y_rep"]
    (3, (3, 6))
    """

    params: tuple[str, ...]
    tparams: tuple[str, ...]
    gqs: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    offsets: Mapping[str, tuple[int, int]]

    @classmethod
    def from_names(
        cls,
        shapes: Mapping[str, tuple[int, ...]],
        params: Sequence[str],
        tparams: Sequence[str],
        gqs: Sequence[str],
    ) -> VariableLayout:
        """The layout of the three blocks, one after another.

        Examples
        --------
        >>> from stan_bridge.layout import VariableLayout
        >>> VariableLayout.from_names({"a": (2, 2)}, ["a"], [], []).offsets
        {'a': (0, 4)}
        """
        offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for n in (*params, *tparams, *gqs):
            size = int(np.prod(shapes[n], dtype=np.int64))
            offsets[n] = (pos, pos + size)
            pos += size
        return cls(tuple(params), tuple(tparams), tuple(gqs), dict(shapes), offsets)

    @classmethod
    def from_info(
        cls, stan_info: Mapping[str, Any], handle_info: Mapping[str, Any]
    ) -> VariableLayout:
        """The layout from ``stanc --info`` and the compiled model's own description.

        Parameters
        ----------
        stan_info : dict
            ``stanc --info`` output (which block each name belongs to).
        handle_info : dict
            The shim's model info: ``names`` and ``dims`` of every variable,
            in Stan's order.

        Returns
        -------
        VariableLayout

        Examples
        --------
        >>> from stan_bridge.layout import VariableLayout
        >>> layout = VariableLayout.from_info(
        ...     {"parameters": {"mu": {}}, "generated quantities": {"y_rep": {}}},
        ...     {"names": ["mu", "y_rep"], "dims": [[], [4]]})
        >>> layout.gqs, layout.shapes["y_rep"]
        (('y_rep',), (4,))
        """
        names = list(handle_info["names"])
        shapes = {
            n: tuple(int(d) for d in dims)
            for n, dims in zip(names, handle_info["dims"], strict=True)
        }

        def block(key: str) -> list[str]:
            return [n for n in names if n in stan_info.get(key, {})]

        return cls.from_names(
            shapes,
            block("parameters"),
            block("transformed parameters"),
            block("generated quantities"),
        )

    def width(self, include_tp: bool = True, include_gq: bool = False) -> int:
        """Number of flat columns with these blocks (generated quantities imply the others).

        Examples
        --------
        >>> from stan_bridge.layout import VariableLayout
        >>> VariableLayout.from_names({"a": (2,), "b": ()}, ["a"], ["b"], []).width(False)
        2
        """
        names = list(self.params)
        if include_tp or include_gq:
            names += self.tparams
        if include_gq:
            names += self.gqs
        return sum(b - a for a, b in (self.offsets[n] for n in names))

    def split(self, flat: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """``(n, width)`` flat rows -> ``name -> (n, *shape)`` for ``names``.

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge.layout import VariableLayout
        >>> layout = VariableLayout.from_names({"a": (), "b": (2,)}, ["a", "b"], [], [])
        >>> layout.split(np.array([[1.0, 2.0, 3.0]]), ["b"])["b"]
        array([[2., 3.]])
        """
        out = {}
        for n in names:
            a, b = self.offsets[n]
            out[n] = reshape_rows(flat[:, a:b], self.shapes[n])
        return out

    def flat_names(self, include_tp: bool = True, include_gq: bool = False) -> list[str]:
        """Scalar names in Stan's order, CmdStan style: ``theta[1]``, ``L[2,1]``.

        Examples
        --------
        >>> from stan_bridge.layout import VariableLayout
        >>> VariableLayout.from_names({"L": (2, 2)}, ["L"], [], []).flat_names()
        ['L[1,1]', 'L[2,1]', 'L[1,2]', 'L[2,2]']
        """
        names = list(self.params)
        if include_tp or include_gq:
            names += self.tparams
        if include_gq:
            names += self.gqs
        out = []
        for n in names:
            shape = self.shapes[n]
            if not shape:
                out.append(n)
                continue
            idx = np.indices(shape).reshape(len(shape), -1, order="F").T + 1
            out.extend(f"{n}[{','.join(str(i) for i in row)}]" for row in idx)
        return out
