"""The Keras forum's LearnableMultiplier, rewritten: entries from [1, -1, 0.5, -0.5].

KERAS_BACKEND=jax python examples/keras_multiplier.py   (or tensorflow, or torch)

The forum's layer computed ``inputs * tf.math.sign(self.kernel)``: its gradient is zero, so
the kernel never moves. snapset's Multiplier keeps a latent weight behind the exact values and
passes a straight-through gradient to it; what the layer multiplies by is always in the set.
"""

import keras
import numpy as np

import snapset.keras as sk

values = [1, -1, 0.5, -0.5]
rng = np.random.default_rng(0)
planted = rng.choice(np.float32(values), 16)
x = rng.standard_normal((2048, 16)).astype("float32")
y = x * planted + 0.1 * rng.standard_normal((2048, 16)).astype("float32")

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((16,)), sk.Multiplier(values=values, name="multiplier")])
model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
model.fit(x, y, epochs=12, batch_size=64, verbose=0, callbacks=[flips := sk.FlipRatio()])

learned = sk.exact_weights(model)["multiplier/kernel"]  # the exact values, not the latents
print("backend:", keras.backend.backend())
print("flip ratio per epoch:", [round(r, 3) for r in flips.flip_ratios["multiplier/kernel"]])
print("planted:", planted.tolist())
print("learned:", learned.tolist())
print("exact match:", bool(np.array_equal(learned, planted)))
