"""``Module`` and ``Parameter``: state (parameters, buffers, submodules) and its bookkeeping.

Names, traversal order and ``state_dict`` keys follow PyTorch, so a model defined the same way
in both has the same keys (``features.0.weight``, ``bn1.running_mean``, ...).
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from collections.abc import Iterator

from ..autograd import TRACER, mark_written
from ..tensor import Tensor, is_floating


class Parameter(Tensor):
    """A tensor that a Module registers as trainable (``requires_grad=True`` by default)."""

    __slots__ = ()

    def __new__(cls, data: Tensor | None = None, requires_grad: bool = True):
        if data is None:
            from ..tensor import zeros

            data = zeros(0)
        if not isinstance(data, Tensor):
            raise TypeError(f"Parameter(): data must be a Tensor, got {type(data).__name__}")
        if requires_grad and not is_floating(data.dtype):
            raise TypeError(f"Parameter(): requires_grad needs a float tensor, got {data.dtype}")
        p = Tensor._make.__func__(cls, data.data, data.device, requires_grad=requires_grad)
        return p

    def __init__(self, data=None, requires_grad=True):  # state is set in __new__
        pass

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class RemovableHandle:
    """What ``register_forward_hook`` returns: ``remove()`` unregisters the hook (also usable
    as a context manager)."""

    _next_id = 0

    def __init__(self, store: dict, hook, owner: Module | None = None):
        RemovableHandle._next_id += 1
        self.id = RemovableHandle._next_id
        self._store, self._owner = store, owner
        store[self.id] = hook

    def remove(self) -> None:
        self._store.pop(self.id, None)
        owner = self._owner
        if owner is not None and not self._store:
            owner.__dict__.pop("_forward_hooks", None)  # the hook-free fast path again

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False


_global_forward_hooks: OrderedDict = OrderedDict()


def register_module_forward_hook(hook) -> RemovableHandle:
    """A forward hook on every Module (used by ``numbaconv.summary`` to trace a model)."""
    if not callable(hook):
        raise TypeError(f"register_module_forward_hook(): hook must be callable, got {hook!r}")
    return RemovableHandle(_global_forward_hooks, hook)


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of every layer and model: override ``forward``; assign parameters and
    submodules as attributes and they are registered by name."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"cannot assign {name!r} before Module.__init__() has run; call "
                f"super().__init__() first in {type(self).__name__}.__init__")
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        if isinstance(value, Parameter | Module):
            # a plain attribute of that name (``self.x = None`` earlier) would shadow it
            self.__dict__.pop(name, None)
            (self._parameters if isinstance(value, Parameter) else self._modules)[name] = value
        elif name in self.__dict__.get("_buffer_names", ()) and isinstance(value, Tensor):
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is None:
            self._parameters[name] = None
        else:
            setattr(self, name, param)

    def register_buffer(self, name: str, tensor: Tensor | None) -> None:
        if not isinstance(tensor, Tensor) and tensor is not None:
            raise TypeError(f"register_buffer(): {name} must be a Tensor or None")
        names = self.__dict__.setdefault("_buffer_names", set())
        names.add(name)
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module(): {name} must be a Module, got {type(module).__name__}")
        self._modules[name] = module

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = "", memo=None) -> Iterator[tuple[str, Module]]:
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named(self, store, recurse):
        seen = set()
        modules = self.named_modules() if recurse else [("", self)]
        for prefix, m in modules:
            for name, t in getattr(m, store).items():
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                yield (f"{prefix}.{name}" if prefix else name), t

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        for name, p in self._named("_parameters", recurse):
            yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        for name, b in self._named("_buffers", recurse):
            yield (f"{prefix}.{name}" if prefix else name), b

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ------------------------------------------------------------ modes and grads
    def train(self, mode: bool = True) -> Module:
        if not isinstance(mode, bool):
            raise TypeError(f"train(): mode must be a bool, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def apply(self, fn) -> Module:
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def to(self, device=None, dtype=None) -> Module:
        """Move (or cast) every parameter and buffer in place, keeping Parameter identity."""
        for m in self.modules():
            for store in (m._parameters, m._buffers):
                for t in store.values():
                    if t is None:
                        continue
                    moved = t.to(device=device, dtype=dtype if t.dtype.kind == "f" else None)
                    if moved is not t:
                        t.data, t.device = moved.data, moved.device
                        if t.grad is not None:
                            t.grad = t.grad.to(device=device, dtype=dtype)
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------ state
    def state_dict(self) -> OrderedDict:
        """Parameters and buffers by their dotted names (detached tensors sharing memory)."""
        out = OrderedDict()
        for prefix, m in self.named_modules():
            for store in (m._parameters, m._buffers):
                for name, t in store.items():
                    if t is not None:
                        out[f"{prefix}.{name}" if prefix else name] = t.detach()
        return out

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values in by name; shapes must match. With ``strict``, missing or unexpected
        keys are an error (raised before anything is copied)."""
        own = OrderedDict()
        for prefix, m in self.named_modules():
            for store in (m._parameters, m._buffers):
                for name, t in store.items():
                    if t is not None:
                        own[f"{prefix}.{name}" if prefix else name] = t
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict(): missing keys {missing}, unexpected keys "
                           f"{unexpected}")
        import numpy as np

        for k, t in own.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            arr = v.numpy() if isinstance(v, Tensor) else np.asarray(v)
            if tuple(arr.shape) != t.shape:
                raise ValueError(f"load_state_dict(): {k} has shape {tuple(arr.shape)} in the "
                                 f"state dict but {t.shape} in the model")
            if arr.dtype != t.dtype:
                raise TypeError(f"load_state_dict(): {k} has dtype {arr.dtype} in the state "
                                f"dict but {t.dtype} in the model")
        for k, t in own.items():
            if k in state_dict:
                v = state_dict[k]
                arr = v.numpy() if isinstance(v, Tensor) else np.asarray(v)
                t.backend.copy_(t.data, t.backend.asarray(arr, t.dtype))
                mark_written(t)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------ calling and printing
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        if TRACER[0] is not None:  # numbaconv.onnx.export records this call
            return TRACER[0].on_module(self, args, kwargs)
        if not (_global_forward_hooks or "_forward_hooks" in self.__dict__):
            return self.forward(*args, **kwargs)
        out = self.forward(*args, **kwargs)
        hooks = list(_global_forward_hooks.values())
        hooks += list(self.__dict__.get("_forward_hooks", {}).values())
        for hook in hooks:
            replaced = hook(self, args, out)
            if replaced is not None:
                out = replaced
        return out

    def register_forward_hook(self, hook) -> RemovableHandle:
        """Call ``hook(module, inputs, output)`` after every forward of this module; a hook
        that returns a value replaces the output. ``handle.remove()`` takes it off again."""
        if not callable(hook):
            raise TypeError(f"register_forward_hook(): hook must be callable, got {hook!r}")
        hooks = self.__dict__.setdefault("_forward_hooks", OrderedDict())
        return RemovableHandle(hooks, hook, owner=self)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, m in self._modules.items():
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {child}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order; indexable, iterable, and sliceable like PyTorch's."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                if not isinstance(m, Module):
                    raise TypeError(f"Sequential(): argument {i} is a {type(m).__name__}, not "
                                    f"a Module")
                self.add_module(str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(items[idx]))
        if not -len(items) <= idx < len(items):
            raise IndexError(f"Sequential index {idx} out of range for {len(items)} modules")
        return items[idx][1]

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self)), module)
        return self


class ModuleList(Module):
    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self._modules)), module)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        return list(self._modules.values())[idx]
