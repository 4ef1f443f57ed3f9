"""larq's binary network on binary_net.py's architectures, data and recipe (in larq's own
environment, run by ``benchmarks/binary_net.py``).

The same layers as snapset's binary network, written in Keras 2 with larq's ``QuantDense`` /
``QuantConv1D``: every kernel ``kernel_quantizer="ste_sign"`` with
``kernel_constraint="weight_clip"`` (larq's standard binary recipe), every layer but the first
``input_quantizer="ste_sign"``, each followed by ``BatchNormalization``; Adam with the same
one-cycle schedule as snapset's. Prints one JSON row per data set (see ``_common.emit``).
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _common import arguments, emit, splits, wanted
from _larq import fit_and_score, import_larq, one_cycle

WEIGHTS = "Sign weights, sign inputs"
"""How the rows name the network (binary_net.py's label)."""


def main() -> None:
    args = arguments()
    found = import_larq()
    if found is None:
        return
    lq, tf = found
    keras = tf.keras
    recipe = args.recipe
    library = f"larq {lq.__version__}"

    OneCycle = one_cycle(tf)

    def build(dataset):
        kernel = {"kernel_quantizer": "ste_sign", "kernel_constraint": "weight_clip",
                  "use_bias": False}  # fmt: skip
        hidden = {**kernel, "input_quantizer": "ste_sign"}

        def norm():
            return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)

        if dataset == "MNIST-1D":
            layers = [keras.Input((40, 1))]
            for index, stride in enumerate((1, 2, 2)):
                quant = kernel if index == 0 else hidden
                layers += [
                    lq.layers.QuantConv1D(64, 5, strides=stride, padding="same", **quant),
                    norm(),
                ]
            layers.append(keras.layers.Flatten())
        else:
            layers = [keras.Input((64,))]
            for index in range(2):
                layers += [lq.layers.QuantDense(256, **(kernel if index == 0 else hidden)), norm()]
        layers += [lq.layers.QuantDense(10, **hidden), norm()]
        return keras.Sequential(layers)

    for dataset, arrays in splits(args.data).items():
        if not wanted(args, dataset, WEIGHTS, "ste"):
            continue
        x_train, x_test = arrays["x_train"], arrays["x_test"]
        if x_train.ndim == 3:  # (N, 1, 40) in torch's layout -> (N, 40, 1) in Keras'
            x_train, x_test = x_train.transpose(0, 2, 1), x_test.transpose(0, 2, 1)
        steps = -(-len(x_train) // recipe["batch"]) * recipe["epochs"]
        accuracies, seconds = [], []
        for seed in args.seeds:
            keras.utils.set_random_seed(seed)
            model = build(dataset)
            model.compile(
                optimizer=keras.optimizers.Adam(OneCycle(recipe["lr"], steps)),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"],
            )
            accuracy, epoch = fit_and_score(model, arrays, x_train, x_test, recipe)
            accuracies.append(accuracy)
            seconds.append(epoch)
        emit(library, dataset, WEIGHTS, "ste", accuracies, seconds)


if __name__ == "__main__":
    main()
