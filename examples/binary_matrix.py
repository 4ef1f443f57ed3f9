"""Learn a 64x32 matrix whose entries are exactly 0 or 1, from noisy linear measurements.

python examples/binary_matrix.py
"""

import torch

import snapset
import snapset.torch as st

torch.manual_seed(0)
planted = torch.randint(0, 2, (64, 32)).float()
x = torch.randn(2048, 32)
y = x @ planted.T + 0.1 * torch.randn(2048, 64)

layer = st.constrain(torch.nn.Linear(32, 64, bias=False), "weight", snapset.Binary())
optimizer = torch.optim.Adam(layer.parameters(), lr=1e-3)
for epoch in range(6):
    for idx in torch.randperm(len(x)).split(64):
        loss = torch.nn.functional.mse_loss(layer(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    recovered = (layer.weight == planted).float().mean().item()
    print(f"epoch {epoch}: loss {loss.item():.4f}, entries recovered {recovered:.1%}")

st.harden_(layer)  # a plain nn.Linear whose weight holds exact 0s and 1s
print(type(layer).__name__, sorted(layer.weight.unique().tolist()))
