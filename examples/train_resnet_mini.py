"""Train a CIFAR-style ResNet (ResNet-mini) on Fashion-MNIST (or MNIST), print test accuracy.

    python examples/train_resnet_mini.py                      # ResNet-8, 30 epochs: 93.3%
    python examples/train_resnet_mini.py --depth 20 --epochs 30
    python examples/train_resnet_mini.py --epochs 1 --train-subset 5000

SGD with Nesterov momentum 0.9, weight decay 5e-4 and a one-cycle learning-rate schedule;
random crops (padding 2) and horizontal flips for augmentation.
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
    ap = parser(__doc__.split("\n")[0], epochs=30, batch_size=128, lr=0.1)
    ap.add_argument("--depth", type=int, default=8, help="6n+2: 8, 14, 20, ...")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    setup_distributed(args)
    nc.manual_seed(args.seed)
    mean, std = MEAN_STD[args.dataset]
    norm = T.Normalize([mean], [std])
    augment = T.Compose([T.RandomCrop(28, padding=2), T.RandomHorizontalFlip(), norm])
    train, test = datasets(args, augment, norm)
    train_loader, test_loader = loaders(args, train, test, 500, drop_last=True)
    model = wrap(models.resnet_mini(args.depth).to(args.backend), args)
    opt = optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                    weight_decay=5e-4)
    sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=max(args.epochs, 1),
                                          steps_per_epoch=len(train_loader))
    history = nc.train.fit(model, train_loader, opt, args.epochs, val_loader=test_loader,
                           scheduler=sched,
                           checkpoint=checkpoint_path(args, f"resnet{args.depth}"),
                           resume=args.resume, progress=not args.no_progress)
    report(history, args, f"ResNet-{args.depth}", started)
    return history


if __name__ == "__main__":
    main()
