"""Data-parallel training (DDP, gloo, CPU) of a model with ternary, sign-flip and float weights.

    torchrun --nproc_per_node=2 examples/ddp_torchrun.py
    python examples/ddp_torchrun.py          # starts 2 local processes itself

Each process trains on its own shard of scikit-learn's 8x8 digits. DDP averages the gradients,
so Adam (latents and floats) and Bop (flip values) make the same moves on every rank: the
replicas stay identical, and every constrained value stays in its set.
"""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import snapset
import snapset.torch as st


def main() -> None:
    dist.init_process_group("gloo")  # rank, world size and address from the environment
    rank = dist.get_rank()
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, random_state=0)
    train = TensorDataset(torch.tensor(x_train).float(), torch.tensor(y_train))
    sampler = DistributedSampler(train, shuffle=True, seed=0)  # a different shard per rank
    loader = DataLoader(train, batch_size=32, sampler=sampler)

    model = nn.Sequential(
        nn.Linear(64, 128),
        nn.ReLU(),
        st.Multiplier(128, snapset.Sign(), method="flip"),  # each entry is -1 or +1
        nn.Linear(128, 10),  # stays float
    )
    st.constrain(model[0], "weight", snapset.Ternary(), method="ste")
    ddp = nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's values
    groups = st.param_groups(model)
    bop = st.Bop2ndOrder(groups.flip)  # its defaults suit any loss scale
    adam = torch.optim.Adam(groups.latent + groups.other, lr=3e-3)

    for epoch in range(8):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(ddp(xb), yb)
            bop.zero_grad()
            adam.zero_grad()
            loss.backward()  # DDP all-reduces the gradients here
            bop.step()
            adam.step()

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    replicas = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(replicas, flat)
    if rank == 0:
        model.eval()
        with torch.no_grad():
            predicted = model(torch.tensor(x_test).float()).argmax(1)
        accuracy = (predicted == torch.tensor(y_test)).float().mean().item()
        print(st.summary(model))
        print(f"{dist.get_world_size()} processes, test accuracy {accuracy:.1%}")
        print(
            "values in their sets:",
            all(
                bool(
                    torch.isin(
                        model.get_submodule(name.rsplit(".", 1)[0]).weight,
                        torch.tensor(c.values.values),
                    ).all()
                )
                for name, c in st.named_constraints(model)
            ),
        )
        print("replicas identical:", all(torch.equal(replicas[0], r) for r in replicas))
    # Tearing the group down while gloo's thread still frees the all_gather's tensors can
    # deadlock on the GIL (torch 2.13): the barrier waits until that work is released.
    dist.barrier()
    dist.destroy_process_group()


def spawned(rank: int, world_size: int, port: int) -> None:
    """Entry point of each process started without torchrun: the environment torchrun sets."""
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)  # two processes share the machine's cores
    main()
    # A spawned process would now run the interpreter's teardown, where gloo's threads may
    # still free tensors and wait for the GIL (torch 2.13): everything is done, so leave now.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    if "RANK" in os.environ:  # started by torchrun
        main()
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        mp.spawn(spawned, args=(2, port), nprocs=2)
