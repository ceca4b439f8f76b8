"""Quick start: a small convolutional classifier trained from scratch with numbaconv's autograd.

The task: tell horizontal stripes from vertical ones in noisy 8x8 images. One 3x3 convolution,
ReLU, 2x2 max pooling and a linear read-out, trained with plain SGD. Prints the loss every 20
steps and the final accuracy on fresh images (100.0% on every run: the seed is fixed).

    python examples/quickstart.py
"""

import argparse

import numpy as np

import numbaconv as nc
import numbaconv.functional as F


def batch(rng, n=64):
    labels = rng.integers(0, 2, n)
    stripes = np.zeros((n, 1, 8, 8), np.float32)
    stripes[labels == 0, :, ::2, :] = 1  # horizontal
    stripes[labels == 1, :, :, ::2] = 1  # vertical
    noisy = stripes + 0.5 * rng.standard_normal(stripes.shape).astype(np.float32)
    return nc.tensor(noisy), nc.tensor(labels)


def main(argv=()):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=100, help="SGD steps of 64 images")
    ap.add_argument("--lr", type=float, default=0.5, help="learning rate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights and the data")
    args = ap.parse_args(argv)
    nc.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    w = (nc.randn(4, 1, 3, 3) * 0.5).requires_grad_()
    v = (nc.randn(4 * 4 * 4, 2) * 0.1).requires_grad_()

    def model(x):
        h = F.max_pool2d(F.conv2d(x, w, padding=1).relu(), 2)
        return h.flatten(1) @ v

    for step in range(args.steps):
        x, y = batch(rng)
        logp = model(x).log_softmax(1)
        loss = -logp[nc.arange(len(y)), y].mean()
        w.grad = v.grad = None
        loss.backward()
        with nc.no_grad():
            for p in (w, v):
                p -= args.lr * p.grad
        if step % 20 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    x, y = batch(rng, 1000)
    with nc.no_grad():
        accuracy = (model(x).argmax(1) == y).numpy().mean()
    print(f"test accuracy {accuracy:.1%}")
    return accuracy


if __name__ == "__main__":
    main(None)  # the command line
