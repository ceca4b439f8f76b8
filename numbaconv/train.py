"""Training loop, evaluation, history and checkpoints.

``fit`` trains for a number of epochs with a tqdm progress bar (loss, accuracy, images/s),
optionally evaluates on a validation loader, steps a learning-rate schedule, records a
``History`` and writes a checkpoint after every epoch. A checkpoint is one ``.npz`` file (no
pickle: loading never executes code) written atomically (a temporary file in the same folder,
fsync'ed, then renamed), holding the model, the optimizer, the schedule, the epoch, the history
and every random generator involved, so that ``resume=True`` continues exactly as if the run
had never stopped.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import distributed as dist
from ._compiling import watch_compiles
from .autograd import no_grad
from .functional import cross_entropy
from .tensor import Tensor


class History(list):
    """One dict per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds,
    images_per_s."""

    def to_json(self, path) -> None:
        _atomic_write_text(path, json.dumps(list(self), indent=2))

    def to_csv(self, path) -> None:
        keys = []
        for row in self:
            keys += [k for k in row if k not in keys]
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self)
        _atomic_write_text(path, buf.getvalue())


def _atomic_write(path, write) -> None:
    """``write(binary_file)`` into a temporary file beside ``path``, fsync it, then rename it
    over ``path``: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _remove_orphans(path: Path) -> None:
    """Delete the temporary files of earlier writes of ``path`` whose process is gone (killed
    mid-write): their names carry the writer's process id."""
    prefix = f".{path.name}."
    for entry in path.parent.glob(glob.escape(prefix) + "*.tmp"):
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
        except (PermissionError, OSError):
            pass  # alive (someone else's) or unknowable: leave it


def _atomic_write_text(path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def _main(output):
    """The main output of a model that returns several (GoogLeNet's logits and aux heads)."""
    return output[0] if isinstance(output, tuple) else output


def _is_classification(output: Tensor, target: Tensor) -> bool:
    return output.ndim == 2 and target.ndim == 1 and target.dtype.kind in "iu"


def evaluate(model, loader, loss_fn=cross_entropy) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` over ``loader``, in eval mode and without a tape.
    Accuracy is NaN for outputs that are not class scores."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        with no_grad():
            for x, y in loader:
                out = model(x)
                n = x.shape[0]
                total_loss += float(loss_fn(out, y).item()) * n
                if _is_classification(_main(out), y):
                    correct += int((_main(out).argmax(1) == y).sum().item())
                count += n
    finally:
        model.train(was_training)
    classify = count > 0 and _is_classification(_main(out), y)
    if dist._active():  # every rank evaluated its share: the job's totals
        total_loss, correct, count, n_classify = dist._allreduce_now(
            [total_loss, correct, count, float(classify)])
        classify = n_classify > 0
    acc = correct / count if count and classify else float("nan")
    return total_loss / max(count, 1), acc


SYNC_EVERY = 10  # batches between reads of the running loss and accuracy
_first_step_done = False  # in this process: the first step is the one that compiles


def _train_epoch(model, loader, optimizer, loss_fn, scheduler, bar):
    """One epoch. Loss and accuracy stay on the device as small tensors and are read every
    SYNC_EVERY batches (and at the end): a read waits for the GPU, so reading every batch
    would stop the host from queueing the next steps while the current one runs."""
    model.train()
    total_loss, correct, count = 0.0, 0, 0
    start = time.perf_counter()
    classify = None
    pending = []  # (loss, correct or None, n) not yet read

    def drain():
        nonlocal total_loss, correct
        for loss_t, correct_t, n_t in pending:
            total_loss += float(loss_t.item()) * n_t
            if correct_t is not None:
                correct += int(correct_t.item())
        pending.clear()

    n_batches = len(loader)
    global _first_step_done
    desc = bar.desc if bar is not None else None
    if bar is not None and not _first_step_done:
        # a first run compiles every kernel the step needs (tens of seconds) before any
        # progress: say so, naming each kernel as it compiles, instead of sitting silent
        bar.set_description(f"{desc} (first step: loading kernels)")
        bar.refresh()
    def compiling(name, n):
        bar.set_description(f"{desc} (first step: compiling kernel {n}, {name}; cached for "
                            f"later runs)")
        bar.refresh()

    for i, (x, y) in enumerate(loader):
        watch = not _first_step_done and bar is not None
        with watch_compiles(compiling) if watch else contextlib.nullcontext():
            out = model(x)
            loss = loss_fn(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if classify is None:
                classify = _is_classification(_main(out), y)
            with no_grad():
                hits = (_main(out).argmax(1) == y).sum() if classify else None
        if scheduler is not None and getattr(scheduler, "step_per_batch", False):
            scheduler.step()
        n = x.shape[0]
        pending.append((loss.detach(), hits, n))
        count += n
        if not _first_step_done:
            _first_step_done = True
            if bar is not None:
                bar.set_description(desc)
        last = i == n_batches - 1
        if len(pending) >= SYNC_EVERY or last:
            drain()
            if bar is not None:
                rate = count / max(time.perf_counter() - start, 1e-9)
                post = {"loss": f"{total_loss / count:.4f}", "img/s": f"{rate:.0f}"}
                if classify:
                    post["acc"] = f"{correct / count:.4f}"
                bar.set_postfix(post, refresh=False)
        if bar is not None:
            bar.update(1)
    drain()
    seconds = time.perf_counter() - start
    if dist._active():  # the whole job's loss and accuracy; its time is the slowest rank's
        total_loss, correct, count = dist._allreduce_now([total_loss, correct, count])
        seconds = float(dist._allreduce_now([seconds], "max")[0])
    acc = correct / count if classify else float("nan")
    return total_loss / max(count, 1), acc, seconds, count / max(seconds, 1e-9)


def fit(model, train_loader, optimizer, epochs: int, loss_fn=cross_entropy, val_loader=None,
        scheduler=None, checkpoint=None, resume: bool = False, progress: bool = True,
        history_path=None) -> History:
    """Train ``model`` for ``epochs`` epochs and return the per-epoch History.

    ``checkpoint`` is a file path: written after every epoch. With ``resume=True`` and an
    existing checkpoint, training continues after its last completed epoch (weights, optimizer,
    schedule, history and random generators restored). ``history_path`` (``.json`` or
    ``.csv``) is rewritten after every epoch.

    Under MPI (``numbaconv.distributed``, the model wrapped in DistributedDataParallel), every
    rank calls ``fit`` alike: the progress bar, the history file and the checkpoints are rank
    0's alone; the loss, accuracy and validation figures are the whole job's (summed over the
    ranks); a loader's DistributedSampler gets ``set_epoch`` before each epoch. A checkpoint
    holds the model without the ``module.`` prefix, so it resumes on any number of ranks.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit(): epochs={epochs!r} must be a non-negative int")
    history = History()
    first_epoch = 0
    if resume:
        if checkpoint is None:
            raise ValueError("fit(): resume=True needs checkpoint=<path>")
        if Path(checkpoint).exists():
            state = load_checkpoint(checkpoint, model, optimizer, scheduler, train_loader)
            first_epoch = state["epoch"] + 1
            history.extend(state["history"])
    bar_cls = None
    rank0 = dist.get_rank() == 0
    if progress and rank0:
        try:
            from tqdm.auto import tqdm as bar_cls
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar_cls = None
    for epoch in range(first_epoch, epochs):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        bar = bar_cls(total=len(train_loader), desc=f"epoch {epoch + 1}/{epochs}",
                      unit="batch", leave=True) if bar_cls else None
        try:
            loss, acc, seconds, rate = _train_epoch(model, train_loader, optimizer, loss_fn,
                                                    scheduler, bar)
            row = {"epoch": epoch + 1, "train_loss": loss, "train_acc": acc,
                   "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
                   "images_per_s": rate}
            if val_loader is not None:
                row["val_loss"], row["val_acc"] = evaluate(model, val_loader, loss_fn)
            if bar is not None:
                post = {"loss": f"{loss:.4f}", "img/s": f"{rate:.0f}"}
                if acc == acc:
                    post["acc"] = f"{acc:.4f}"
                if val_loader is not None:
                    post["val_acc"] = f"{row['val_acc']:.4f}"
                bar.set_postfix(post)
        finally:
            if bar is not None:
                bar.close()
        if scheduler is not None and not getattr(scheduler, "step_per_batch", False):
            scheduler.step()
        history.append(row)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, scheduler, epoch, history,
                            train_loader)
        if history_path is not None and rank0:
            (history.to_csv if str(history_path).endswith(".csv") else history.to_json)(
                history_path)
    return history


# ------------------------------------------------------------------ checkpoints


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def save_checkpoint(path, model, optimizer=None, scheduler=None, epoch: int = -1,
                    history=(), loader=None) -> None:
    """Write model, optimizer, schedule, epoch, history and RNG states to ``path`` (.npz).

    Under MPI every rank calls it (it gathers each rank's random generators) and rank 0
    alone writes; the ranks leave together once the file is in place."""
    from .nn.parallel import unwrap

    model = unwrap(model)
    arrays = {}
    for k, t in model.state_dict().items():
        arrays[f"model/{k}"] = np.asarray(t.numpy(), order="C")
    meta = {"format": "numbaconv-checkpoint-1", "epoch": int(epoch),
            "history": _json_safe(list(history))}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for idx, st in sd["state"].items():
            for name, v in st.items():
                if isinstance(v, Tensor):
                    arrays[f"optim/{idx}/{name}"] = np.asarray(v.numpy(), order="C")
                else:
                    scalars.setdefault(str(idx), {})[name] = v
        meta["optimizer"] = {"param_groups": _json_safe(sd["param_groups"]),
                             "scalars": _json_safe(scalars)}
    if scheduler is not None:
        meta["scheduler"] = _json_safe(scheduler.state_dict())
    from .backend import get_backend

    be = get_backend(next(iter(model.parameters())).device) if any(
        True for _ in model.parameters()) else get_backend("cpu")
    meta["rng"] = {"backend": _json_safe(be.rng_state())}
    if loader is not None and hasattr(loader, "state_dict"):
        meta["rng"]["loader"] = _json_safe(loader.state_dict())
    if dist._active():  # every rank's generators, rank 0's also under the usual keys
        states = dist._gather_strings(json.dumps(meta["rng"]))
        if states is not None:
            meta["rng"]["ranks"] = [json.loads(text) for text in states]
    if dist.get_rank() == 0:
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        _atomic_write(path, lambda f: np.savez(f, **arrays))
    if dist._active():
        dist.barrier()


def _read_checkpoint(path):
    """(meta, model arrays, optimizer arrays) of a checkpoint file; a ValueError naming the
    path and the fault for anything that is not a whole, valid one."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):
            raise ValueError("it holds one bare array, not a checkpoint's entries")
        with loaded as z:
            if "meta" not in z.files:
                raise ValueError("not a numbaconv checkpoint (no meta entry)")
            meta = json.loads(z["meta"].tobytes().decode())
            model_state = {k[len("model/"):]: z[k] for k in z.files if k.startswith("model/")}
            optim_arrays = {k: z[k] for k in z.files if k.startswith("optim/")}
    except FileNotFoundError:
        raise
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not a whole checkpoint (truncated or corrupt .npz: {e})"
                         ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: the checkpoint's metadata is not valid JSON ({e})") from None
    except (ValueError, OSError, EOFError, KeyError, zlib.error) as e:
        # np.load's ValueError for a text (or pickled) file says "allow_pickle": not the
        # user's concern, so the message says what the file is not
        msg = str(e) if "allow_pickle" not in str(e) else "it is not an .npz archive"
        raise ValueError(f"{path}: cannot be read as a numbaconv checkpoint ({msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != "numbaconv-checkpoint-1":
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path}: unknown checkpoint format {found!r}")
    for key in ("epoch", "rng"):
        if key not in meta:
            raise ValueError(f"{path}: the checkpoint's metadata has no {key!r} entry")
    return meta, model_state, optim_arrays


def load_checkpoint(path, model=None, optimizer=None, scheduler=None, loader=None) -> dict:
    """Read a checkpoint (never unpickling anything) and restore whatever objects are given:
    all of them or, when any part is invalid, none (a ValueError names the path and the fault).
    Returns {"epoch", "history", "meta", "model_state"}."""
    from .nn.parallel import unwrap

    meta, model_state, optim_arrays = _read_checkpoint(path)
    model = unwrap(model) if model is not None else None
    backups = []
    if model is not None:
        saved = {k: t.numpy().copy() for k, t in model.state_dict().items()}
        backups.append(lambda: model.load_state_dict(saved))
    if optimizer is not None:
        saved_opt = optimizer.state_dict()
        backups.append(lambda: optimizer.load_state_dict(saved_opt))
    if scheduler is not None:
        saved_sched = scheduler.state_dict()
        backups.append(lambda: scheduler.load_state_dict(saved_sched))
    try:
        return _restore(path, meta, model_state, optim_arrays, model, optimizer, scheduler,
                        loader)
    except Exception as e:
        for restore in backups:
            restore()
        if isinstance(e, ValueError | TypeError) and str(path) in str(e):
            raise
        raise ValueError(f"{path}: the checkpoint does not fit ({type(e).__name__}: {e}); "
                         f"nothing was restored") from e


def _restore(path, meta, model_state, optim_arrays, model, optimizer, scheduler, loader):
    if model is not None:
        model.load_state_dict(model_state)
    if optimizer is not None and "optimizer" in meta:
        state = {}
        for k, arr in optim_arrays.items():
            _, idx, name = k.split("/", 2)
            state.setdefault(int(idx), {})[name] = arr
        for idx, sc in meta["optimizer"]["scalars"].items():
            state.setdefault(int(idx), {}).update(sc)
        groups = meta["optimizer"]["param_groups"]
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(meta["scheduler"])
    rng = meta["rng"]
    ranks = rng.get("ranks")
    if dist.get_world_size() > 1 and isinstance(ranks, list):
        # a rank that the saved job had resumes its own generators; one it did not have keeps
        # its seeded ones (rather than repeat rank 0's dropout masks and augmentations)
        rng = ranks[dist.get_rank()] if dist.get_rank() < len(ranks) else {}
    if model is not None and "backend" in rng:
        from .backend import get_backend

        params = list(model.parameters())
        be = get_backend(params[0].device if params else "cpu")
        be.set_rng_state(rng["backend"])
    if loader is not None and "loader" in rng:
        loader.load_state_dict(rng["loader"])
    history = [{k: (float("nan") if v is None else v) for k, v in row.items()}
               for row in meta.get("history", [])]
    return {"epoch": meta["epoch"], "history": history, "meta": meta,
            "model_state": model_state}
