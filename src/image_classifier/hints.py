"""Names for heavy libraries' types in node signatures.

Kedro imports every node module at start-up, and evaluates every node's type hints when a run
validates its parameters: a hint naming ``keras.Model`` or ``plt.Figure`` would need TensorFlow or
matplotlib imported just for that. Type checkers see the real types; at run time they are ``Any``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keras import Model as KerasModel
    from matplotlib.figure import Figure
else:
    KerasModel = Figure = Any

__all__ = ["Figure", "KerasModel"]
