"""What the training examples share: argument parsing, data, device and the final report."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numbaconv as nc
from numbaconv import data


def parser(description: str, epochs: int, batch_size: int, lr: float) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--dataset", choices=["fashion-mnist", "mnist"], default="fashion-mnist",
                    help="which IDX dataset to train on")
    ap.add_argument("--data-dir", default=None,
                    help="folder with the IDX files (default: the user cache, then the "
                         "system location of Debian's dataset-fashion-mnist)")
    ap.add_argument("--download", action="store_true", help="download missing files")
    ap.add_argument("--epochs", type=int, default=epochs, help="passes over the training set")
    ap.add_argument("--batch-size", type=int, default=batch_size, help="images per step")
    ap.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    ap.add_argument("--backend", choices=list(nc.DEVICES), default=None,
                    help="device (default: NUMBACONV_BACKEND, else cpu)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the weights, the shuffling and the augmentation")
    ap.add_argument("--train-subset", type=int, default=None,
                    help="train on the first N images only (quick runs)")
    ap.add_argument("--checkpoint-dir", default=None, help="write a checkpoint every epoch")
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    ap.add_argument("--plot", default=None,
                    help="save loss/accuracy curves here (needs matplotlib)")
    ap.add_argument("--no-progress", action="store_true",
                    help="no progress bars, one line per epoch")
    ap.add_argument("--distributed", action="store_true",
                    help="data-parallel training on the ranks of an MPI job: start it with "
                         "mpiexec -n N python ... --distributed (--batch-size is per rank)")
    return ap


def setup_distributed(args) -> int:
    """Join the MPI job (with --distributed) and share this machine's cores among its ranks;
    returns this process's rank."""
    if not args.distributed:
        return 0
    from numbaconv import distributed as dist

    dist.init_process_group()
    if dist.get_world_size() == 1:
        print(f"--distributed in a world of one rank: to train on N processes, start "
              f"{dist.how_to_launch(n=2)} --distributed")
    if "NUMBA_NUM_THREADS" not in os.environ:
        import numba

        numba.set_num_threads(max(1, numba.config.NUMBA_NUM_THREADS
                                  // dist.local_world_size()))
    return dist.get_rank()


def loaders(args, train, test, test_batch, drop_last=False):
    """Training loader (shuffled) and test loader, each rank's share of them with
    --distributed."""
    device = args.backend
    if not args.distributed:
        return (data.DataLoader(train, args.batch_size, shuffle=True, drop_last=drop_last,
                                seed=args.seed, device=device),
                data.DataLoader(test, test_batch, device=device))
    from numbaconv import distributed as dist

    rank = dist.get_rank()
    train_sampler = data.DistributedSampler(train, seed=args.seed, drop_last=drop_last)
    test_sampler = data.DistributedSampler(test, shuffle=False)
    # the sampler orders the images; the loader's generator (augmentation) differs per rank
    return (data.DataLoader(train, args.batch_size, sampler=train_sampler, drop_last=drop_last,
                            seed=args.seed + rank, device=device),
            data.DataLoader(test, test_batch, sampler=test_sampler, device=device))


def wrap(model, args):
    """The model as each rank trains it: in DistributedDataParallel with --distributed
    (BatchNorm layers made SyncBatchNorm)."""
    if not args.distributed:
        return model
    from numbaconv import nn

    return nn.parallel.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(model))


def datasets(args, train_transform=None, test_transform=None):
    cls = data.FashionMNIST if args.dataset == "fashion-mnist" else data.MNIST
    train = cls(args.data_dir, train=True, download=args.download, transform=train_transform)
    test = cls(args.data_dir, train=False, download=args.download, transform=test_transform)
    if args.train_subset:
        train = data.Subset(train, range(min(args.train_subset, len(train))))
    return train, test


def checkpoint_path(args, name):
    if args.checkpoint_dir is None:
        return None
    return Path(args.checkpoint_dir) / f"{name}.npz"


def report(history, args, name, started):
    if args.distributed:
        from numbaconv import distributed as dist

        if dist.get_rank() != 0:
            return
    last = history[-1]
    print(f"{name}: final test accuracy {last['val_acc']:.2%} after {last['epoch']} epochs "
          f"({time.perf_counter() - started:.0f} s in all, "
          f"{last['images_per_s']:.0f} training images/s in the last epoch)")
    if args.plot:
        plot(history, args.plot, name)


def plot(history, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="test")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    b.plot(epochs, [h["train_acc"] for h in history], label="train")
    b.plot(epochs, [h["val_acc"] for h in history], label="test")
    b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")
