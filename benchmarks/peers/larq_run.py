"""larq on snapset's architectures, data and recipe (run in larq's own environment).

The same CNN / MLP as snapset's (input [x, -x], Conv1D/Dense without bias, BatchNormalization,
ReLU, centring over channels), written in Keras 2 with larq's ``QuantConv1D``/``QuantDense``:

- ``ste``: ``kernel_quantizer="ste_sign"`` with ``kernel_constraint="weight_clip"`` (larq's
  standard binary-weight recipe), Adam with the same one-cycle schedule as snapset's;
- ``flip``: ``kernel_quantizer="ste_sign"``, weights trained by ``larq.optimizers.Bop`` inside a
  ``CaseOptimizer`` with the recipe's first-moment Bop settings (``bop_threshold``,
  ``bop_gamma`` decaying linearly), Adam (one cycle) for BatchNorm.

Only the weights are binary, as in snapset's rows (no input quantizer). ``--plain``: the plain
MNIST-1D CNN (no [x, -x], no centring), with the recipe's schedule (a cosine decay there).
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _common import arguments, emit, splits, wanted
from _larq import fit_and_score, import_larq, one_cycle


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

    class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, start: float, total: int, floor: float) -> None:
            self.start, self.total, self.floor = start, total, floor

        def __call__(self, step):
            fraction = 1 - tf.cast(step, tf.float32) / self.total
            return self.start * tf.maximum(fraction, self.floor)

    def center(h):
        return h - tf.reduce_mean(h, axis=-1, keepdims=True)

    def plus_minus(x):
        return tf.concat([x, -x], axis=-1)

    def block(layers, make):
        layers += [
            make(),
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
            keras.layers.ReLU(),
        ]
        layers += [] if args.plain else [keras.layers.Lambda(center)]

    def build(dataset, method):
        quant = {"kernel_quantizer": "ste_sign", "use_bias": False}
        if method == "ste":
            quant["kernel_constraint"] = "weight_clip"
        if dataset == "MNIST-1D":
            layers = [keras.Input((40, 1))]
            layers += [] if args.plain else [keras.layers.Lambda(plus_minus)]
            for stride in (1, 2, 2):
                block(layers, lambda s=stride: lq.layers.QuantConv1D(
                    64, 5, strides=s, padding="same", **quant))  # fmt: skip
            layers.append(keras.layers.Flatten())
        else:
            layers = [keras.Input((64,)), keras.layers.Lambda(plus_minus)]
            for _ in range(2):
                block(layers, lambda: lq.layers.QuantDense(256, **quant))
        layers += [
            lq.layers.QuantDense(10, **quant),
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5),
        ]
        return keras.Sequential(layers)

    for dataset, arrays in splits(args.data).items():
        x_train, x_test = arrays["x_train"], arrays["x_test"]
        if x_train.ndim == 3:  # (N, 1, 40) in torch's layout -> (N, 40, 1) in Keras'
            x_train, x_test = x_train.transpose(0, 2, 1), x_test.transpose(0, 2, 1)
        steps = -(-len(x_train) // recipe["batch"]) * recipe["epochs"]
        for method in ("ste",) if args.plain else ("ste", "flip"):
            if not wanted(args, dataset, "Sign {-1, 1}", method):
                continue
            accuracies, seconds = [], []
            for seed in args.seeds:
                keras.utils.set_random_seed(seed)
                model = build(dataset, method)
                # larq 0.13's CaseOptimizer and Bop are built on the legacy optimizer API.
                rate = (
                    keras.optimizers.schedules.CosineDecay(recipe["lr"], steps)
                    if recipe.get("schedule") == "cosine"
                    else OneCycle(recipe["lr"], steps)
                )
                adam = keras.optimizers.legacy.Adam(rate)
                if method == "flip":
                    gamma = LinearDecay(recipe["bop_gamma"], steps, recipe["gamma_floor"])
                    optimizer = lq.optimizers.CaseOptimizer(
                        (lq.optimizers.Bop.is_binary_variable,
                         lq.optimizers.Bop(threshold=recipe["bop_threshold"], gamma=gamma)),
                        default_optimizer=adam,
                    )  # fmt: skip
                else:
                    optimizer = adam
                model.compile(
                    optimizer=optimizer,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"],
                )
                accuracy, epoch = fit_and_score(model, arrays, x_train, x_test, recipe)
                accuracies.append(accuracy)
                seconds.append(epoch)
            emit(library, dataset, "Sign {-1, 1}", method, accuracies, seconds)


if __name__ == "__main__":
    main()
