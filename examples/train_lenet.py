"""Train LeNet-5 on Fashion-MNIST (or MNIST) and print the test accuracy.

    python examples/train_lenet.py                    # 10 epochs, about 91% on Fashion-MNIST
    python examples/train_lenet.py --epochs 2 --train-subset 10000
    NUMBACONV_BACKEND=cuda python examples/train_lenet.py
    mpiexec -n 2 python examples/train_lenet.py --distributed   # 2 processes, MPI

SGD with Nesterov momentum 0.9, weight decay 5e-4 and a cosine learning-rate schedule;
inputs normalised with the training set's mean and standard deviation.
"""

from __future__ import annotations

import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__file__))

from _common import (  # noqa: E402
    checkpoint_path,
    datasets,
    loaders,
    parser,
    report,
    setup_distributed,
    wrap,
)

import numbaconv as nc  # noqa: E402
from numbaconv import models, optim  # noqa: E402
from numbaconv.data import transforms as T  # noqa: E402

MEAN_STD = {"fashion-mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}


def main(argv=None):
    args = parser(__doc__.split("\n")[0], epochs=10, batch_size=64, lr=0.05).parse_args(argv)
    started = time.perf_counter()
    setup_distributed(args)
    nc.manual_seed(args.seed)
    mean, std = MEAN_STD[args.dataset]
    norm = T.Normalize([mean], [std])
    train, test = datasets(args, norm, norm)
    train_loader, test_loader = loaders(args, train, test, 1000)
    model = wrap(models.lenet5().to(args.backend), args)
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                    weight_decay=5e-4)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.epochs, 1))
    history = nc.train.fit(model, train_loader, opt, args.epochs, val_loader=test_loader,
                           scheduler=sched, checkpoint=checkpoint_path(args, "lenet5"),
                           resume=args.resume, progress=not args.no_progress)
    report(history, args, "LeNet-5", started)
    return history


if __name__ == "__main__":
    main()
