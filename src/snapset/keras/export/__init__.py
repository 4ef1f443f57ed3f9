"""Taking a trained Keras model out of training: packed files that both fronts read.

``save`` writes the file [`snapset.torch.save`][] writes (safetensors, packed codes, PyTorch's
names and layouts); ``load`` reads a file of either front into a Keras model or a dict. For
packed inference, load the file into the equivalent PyTorch model and ``snapset.torch.pack``
it (see the Keras guide).

Examples:
    >>> import os, tempfile, keras, snapset, snapset.keras as sk
    >>> signs = sk.Multiplier(snapset.Sign(), name="multiplier")
    >>> model = keras.Sequential([keras.Input((64,)), signs])
    >>> path = sk.export.save(model, os.path.join(tempfile.mkdtemp(), "m.safetensors"))
    >>> sk.export.load(None, path)["multiplier.weight"].shape
    (64,)
"""

from ._file import load as load
from ._file import save as save

__all__ = ["load", "save"]
