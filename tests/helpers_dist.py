"""What the distributed tests and their MPI ranks (_dist_worker.py) share: data, a net, steps."""

from __future__ import annotations

import numpy as np

from numbaconv import nn, optim
from numbaconv.functional import cross_entropy

N_SAMPLES, STEPS = 64 * 20, 20


def make_data():
    """1280 images of 1x10x10 in 10 classes, each class a bright patch at its own place."""
    rng = np.random.default_rng(11)
    y = rng.integers(0, 10, N_SAMPLES)
    x = rng.normal(0, 0.5, (N_SAMPLES, 1, 10, 10)).astype(np.float32)
    for c in range(10):
        i, j = divmod(c, 4)
        x[y == c, 0, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += 1.5
    return x, y


def make_net(batch_norm: bool) -> nn.Module:
    # no bias before a BatchNorm: its true gradient is zero, so what it gets is rounding
    # noise, which Adam would scale up to full-size steps
    layers = [nn.Conv2d(1, 6, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(6))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
               nn.Linear(6 * 5 * 5, 24, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(24))
    layers += [nn.ReLU(), nn.Linear(24, 10)]
    return nn.Sequential(*layers)


def make_optimizer(name, params):
    if name == "sgd":
        return optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    return optim.Adam(params, lr=3e-3)


def train_steps(model, loader, opt_name, steps=STEPS):
    opt = make_optimizer(opt_name, model.parameters())
    done = 0
    for x, y in loader:
        loss = cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
        if done == steps:
            break
    return model
