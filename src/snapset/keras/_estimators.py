r"""The estimators: surrogate derivatives of the rounding, for ``ste`` and ``stochastic``.

Each is one function with the signature of ``snapset.keras._functional.Surrogate``:
``(latent u, upstream gradient g, scale s, bound r) -> gradient with respect to u``. They share
the forward map, the exact nearest value (or, for ``stochastic`` while training, a random
neighbour) of the latent ``u``, whose straight-through derivative inside the range is the slope
of value against latent,

```text
q = nearest(u) in V,    dq/du ~ s = half_range / r    for |u| <= r,
```

and differ only outside the range ``[-r, r]``. ``SURROGATES`` maps each name of
[`snapset.keras.ESTIMATORS`][] to its function, in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from keras import ops

from ._functional import Surrogate, Tensor


def inward(latent: Tensor, grad: Tensor, scale: float, bound: float) -> Tensor:
    r"""The default: outside the range, only gradients that lead back in pass.

    ```text
    dL/du = s * g * [(clip(u, -r, r) - u) * g <= 0]
    ```

    Gradient descent moves ``u`` by ``-g``, outward where ``g`` has the sign of ``u``'s distance
    beyond the range; those gradients are dropped, the others pass times ``s``. A latent can so
    overshoot by an optimizer step or two at most, and it never starves: any gradient that
    would bring it back reaches it. snapset's own estimator (the PyTorch front's default too).

    Examples:
        >>> u, g = ops.convert_to_tensor([0.05, 0.3, 0.3]), ops.convert_to_tensor([1.0, 1.0, -1.0])
        >>> ops.convert_to_numpy(inward(u, g, 10.0, 0.1)).tolist()
        [10.0, 10.0, -0.0]
    """
    r = ops.convert_to_tensor(bound, latent.dtype)  # a Python float could become float32
    keep = ops.less_equal((ops.clip(latent, -r, r) - latent) * grad, 0)
    return ops.cast(keep, grad.dtype) * grad * scale


def clip(latent: Tensor, grad: Tensor, scale: float, bound: float) -> Tensor:
    r"""The clipped straight-through estimator: nothing passes outside the range.

    ```text
    dL/du = s * g * [|u| <= r]
    ```

    A latent that leaves the range gets no gradient, so its value can no longer change.
    Courbariaux et al., 2016, "Binarized Neural Networks" (larq's ``ste_sign``).

    Examples:
        >>> u, g = ops.convert_to_tensor([0.05, 0.3, 0.3]), ops.convert_to_tensor([1.0, 1.0, -1.0])
        >>> ops.convert_to_numpy(clip(u, g, 10.0, 0.1)).tolist()
        [10.0, 0.0, -0.0]
    """
    r = ops.convert_to_tensor(bound, latent.dtype)  # a Python float could become float32
    keep = ops.less_equal(ops.abs(latent), r)
    return ops.cast(keep, grad.dtype) * grad * scale


def identity(latent: Tensor, grad: Tensor, scale: float, bound: float) -> Tensor:
    r"""The plain straight-through estimator: everything passes, inside the range or not.

    ```text
    dL/du = s * g
    ```

    A latent may drift far outside the range and take long to come back. Bengio et al., 2013,
    "Estimating or Propagating Gradients Through Stochastic Neurons for Conditional
    Computation".

    Examples:
        >>> u, g = ops.convert_to_tensor([0.05, 0.3, 0.3]), ops.convert_to_tensor([1.0, 1.0, -1.0])
        >>> ops.convert_to_numpy(identity(u, g, 10.0, 0.1)).tolist()
        [10.0, 10.0, -10.0]
    """
    return grad * scale


SURROGATES: Mapping[str, Surrogate] = MappingProxyType(
    {"inward": inward, "clip": clip, "identity": identity}
)
"""Each estimator's surrogate derivative, by name; the keys are ``snapset._spec.ESTIMATORS``."""
