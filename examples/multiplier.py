"""A learnable per-feature multiplier whose entries come from [1, -1, 0.5, -0.5].

python examples/multiplier.py
"""

import torch

import snapset.torch as st

values = [1, -1, 0.5, -0.5]
torch.manual_seed(0)
planted = torch.tensor(values)[torch.randint(0, 4, (16,))]
x = torch.randn(2048, 16)
y = x * planted + 0.1 * torch.randn(2048, 16)

model = st.Multiplier(16, values)
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(12):
    for idx in torch.randperm(len(x)).split(64):
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

model.eval()
print("planted:", planted.tolist())
print("learned:", model.weight.tolist())
print("exact match:", torch.equal(model.weight, planted))
