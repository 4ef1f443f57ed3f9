"""The PyTorch front of snapset: constraints, transforms and layers.

Examples:
    >>> import torch, snapset, snapset.torch as st
    >>> model = st.constrain_(torch.nn.Linear(16, 4), snapset.Sign())
    >>> bool(model.weight.abs().eq(1).all())
    True
"""

from .._spec import ESTIMATORS as ESTIMATORS
from .._spec import INITS as INITS
from .._summary import Summary as Summary
from .._summary import SummaryRow as SummaryRow
from . import export as export
from . import optim as optim
from ._batchnorm import reestimate_batchnorm as reestimate_batchnorm
from ._bitnet import bitnet_ as bitnet_
from ._bitnet import set_blend as set_blend
from ._constrain import LINEAR_AND_CONV as LINEAR_AND_CONV
from ._constrain import check_values as check_values
from ._constrain import constrain as constrain
from ._constrain import constrain_ as constrain_
from ._constrain import harden_ as harden_
from ._constrain import named_constraints as named_constraints
from ._constrain import set_temperature as set_temperature
from ._diagnostics import FlipTracker as FlipTracker
from ._diagnostics import summary as summary
from ._estimators import estimator_grad as estimator_grad
from ._layers import GF2Linear as GF2Linear
from ._layers import Multiplier as Multiplier
from ._methods import METHODS as METHODS
from ._methods import STE as STE
from ._methods import Constraint as Constraint
from ._methods import Flip as Flip
from ._methods import GumbelSoftmax as GumbelSoftmax
from ._methods import Scale as Scale
from ._methods import StochasticRounding as StochasticRounding
from ._plot import plot_training as plot_training
from ._quantize import Quantize as Quantize
from ._quantize import input_quantizers as input_quantizers
from ._quantize import quantize as quantize
from ._quantize import quantize_inputs_ as quantize_inputs_
from ._quantize import remove_input_quantizers_ as remove_input_quantizers_
from .export import PackedConv as PackedConv
from .export import PackedGF2Linear as PackedGF2Linear
from .export import PackedLinear as PackedLinear
from .export import PackingReport as PackingReport
from .export import SignChain as SignChain
from .export import SignThresholds as SignThresholds
from .export import SnapsetFileError as SnapsetFileError
from .export import export_gguf as export_gguf
from .export import export_onnx as export_onnx
from .export import export_transformers as export_transformers
from .export import load as load
from .export import pack as pack
from .export import save as save
from .optim import Bop as Bop
from .optim import Bop2ndOrder as Bop2ndOrder
from .optim import ParamGroups as ParamGroups
from .optim import param_groups as param_groups

__all__ = [
    "ESTIMATORS",
    "INITS",
    "LINEAR_AND_CONV",
    "METHODS",
    "STE",
    "Bop",
    "Bop2ndOrder",
    "Constraint",
    "Flip",
    "FlipTracker",
    "GF2Linear",
    "GumbelSoftmax",
    "Multiplier",
    "PackedConv",
    "PackedGF2Linear",
    "PackedLinear",
    "PackingReport",
    "ParamGroups",
    "Quantize",
    "Scale",
    "SignChain",
    "SignThresholds",
    "SnapsetFileError",
    "StochasticRounding",
    "Summary",
    "SummaryRow",
    "bitnet_",
    "check_values",
    "constrain",
    "constrain_",
    "estimator_grad",
    "export",
    "export_gguf",
    "export_onnx",
    "export_transformers",
    "harden_",
    "input_quantizers",
    "load",
    "named_constraints",
    "optim",
    "pack",
    "param_groups",
    "plot_training",
    "quantize",
    "quantize_inputs_",
    "reestimate_batchnorm",
    "remove_input_quantizers_",
    "save",
    "set_blend",
    "set_temperature",
    "summary",
]
