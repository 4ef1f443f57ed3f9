"""brevitas' binary and ternary weights on snapset's architectures, data and training loop.

The snapset model's (``--plain``: the plain CNN's) Conv1d and Linear layers are swapped for
brevitas' ``QuantConv1d`` and ``QuantLinear`` with ``SignedBinaryWeightPerTensorConst`` (weights
in {-1, 1}) or ``SignedTernaryWeightPerTensorConst``; everything else (PlusMinus, BatchNorm,
ReLU, centring, Adam with the recipe's schedule, epochs, batches, seeds) is snapset's own code,
so the only difference is how the weights are quantised and their gradient estimated.
"""

import torch
from _common import arguments, emit, splits, wanted
from torch import nn

from snapset import demo


def brevitas_model(dataset: str, quant: object, seed: int, plain: bool) -> nn.Sequential:
    import brevitas.nn as qnn

    model = demo.build(dataset, "float", seed=seed, plain=plain)
    for index, layer in enumerate(model):
        if isinstance(layer, nn.Conv1d):
            model[index] = qnn.QuantConv1d(
                layer.in_channels, layer.out_channels, layer.kernel_size[0],
                stride=layer.stride[0], padding=layer.padding[0], bias=False, weight_quant=quant,
            )  # fmt: skip
        elif isinstance(layer, nn.Linear):
            model[index] = qnn.QuantLinear(
                layer.in_features, layer.out_features, bias=False, weight_quant=quant
            )
    return model


def main() -> None:
    args = arguments()
    torch.set_num_threads(1)
    try:
        import brevitas
        from brevitas.quant import (
            SignedBinaryWeightPerTensorConst,
            SignedTernaryWeightPerTensorConst,
        )
    except ImportError as error:
        emit_unavailable(f"brevitas is not installed here ({error}); pip install brevitas")
        return
    recipe = demo.Recipe(**args.recipe)
    library = f"brevitas {brevitas.__version__}"
    for dataset, arrays in splits(args.data).items():
        split = demo.Split(dataset, *(torch.from_numpy(arrays[p]) for p in
                                    ("x_train", "y_train", "x_test", "y_test")))  # fmt: skip
        for weights, quant in (
            ("Sign {-1, 1}", SignedBinaryWeightPerTensorConst),
            ("Ternary {-1, 0, 1}", SignedTernaryWeightPerTensorConst),
        ):
            if not wanted(args, dataset, weights, "ste"):
                continue
            accuracies, seconds = [], []
            for seed in args.seeds:
                model = brevitas_model(dataset, quant, seed, args.plain)
                run = demo.train(model, split, recipe, seed=seed)
                accuracies.append(run.accuracy)
                seconds.append(run.seconds_per_epoch)
            emit(library, dataset, weights, "ste", accuracies, seconds)


def emit_unavailable(why: str) -> None:
    import json

    print(json.dumps({"unavailable": why}), flush=True)


if __name__ == "__main__":
    main()
