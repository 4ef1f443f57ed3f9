"""Flip optimizers: train parameters that are exact set values, with no latent weights;
``param_groups`` routes a model's parameters between them and a gradient optimizer.

Examples:
    >>> import torch, snapset, snapset.torch as st
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))
    >>> model = st.constrain_(model, snapset.Binary(), method="flip",
    ...                       filter_fn=lambda module, name: name == "0")
    >>> groups = st.param_groups(model)
    >>> flip_opt = st.optim.Bop(groups.flip, threshold=1e-4, gamma=1e-2)
    >>> float_opt = torch.optim.Adam(groups.latent + groups.other, lr=1e-3)
"""

from torch.optim.optimizer import register_optimizer_step_pre_hook

from ._bop import MOMENTUM_RESETS as MOMENTUM_RESETS
from ._bop import THRESHOLD_MODES as THRESHOLD_MODES
from ._bop import Bop as Bop
from ._bop import Bop2ndOrder as Bop2ndOrder
from ._bop import bop as bop
from ._bop import grad_norms as grad_norms
from ._groups import ParamGroups as ParamGroups
from ._groups import param_groups as param_groups
from ._guard import refuse_flip_parameters as refuse_flip_parameters
from ._schedule import HyperparameterSchedule as HyperparameterSchedule

# Once per process: every other optimizer is refused before it steps a flip parameter.
register_optimizer_step_pre_hook(refuse_flip_parameters)

__all__ = [
    "MOMENTUM_RESETS",
    "THRESHOLD_MODES",
    "Bop",
    "Bop2ndOrder",
    "HyperparameterSchedule",
    "ParamGroups",
    "bop",
    "grad_norms",
    "param_groups",
    "refuse_flip_parameters",
]
