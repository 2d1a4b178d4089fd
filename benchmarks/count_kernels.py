"""Kernels a training step launches on a GPU, counted without one: neuronet's torch backend against PyTorch.

    python benchmarks/count_kernels.py [--workloads mlp cnn gpt resnet nanogpt]

On a GPU a small model's eager step is bound by kernel launches (a few microseconds each, whatever the
kernel does), so their number is what the torch backend's device path must keep at or below PyTorch's.
Each engine takes one steady training step (after two) on PyTorch's meta device, whose tensors have shapes
and no data, under a dispatch mode that counts the aten operators reaching a kernel (views, detaches and
other metadata operators excluded). neuronet runs ``train_step``'s pieces (forward + loss, backward, the
optimizer) on its torch backend's device path; PyTorch its usual step (``zero_grad``, forward, loss,
backward, ``step``) with ``foreach`` optimizers, as on CUDA. For the transformers neuronet is counted twice:
with its explicit attention, and with the fused kernels a GPU would choose (``TorchOps.fused_attention``:
the memory-efficient kernel for float32). The counts are exact and repeatable. An out= variant that
PyTorch generates from the functional kernel counts with its copies. A meta tensor's data pointer is 0, so
where neuronet checks whether an output overlaps its input (the log-softmax into the loss's workspace) it
counts one copy a GPU does not make. The LSTM is left out: on meta PyTorch's LSTM decomposes into its
cells, where on a GPU it is cuDNN's fused layer.
"""

from __future__ import annotations

import argparse
import collections
import sys

import numpy as np

_METADATA = {"view", "_unsafe_view", "reshape", "t", "transpose", "permute", "slice", "select", "alias",
             "expand", "as_strided", "squeeze", "unsqueeze", "split", "unbind", "chunk", "narrow", "detach",
             "lift_fresh", "_local_scalar_dense", "_record_function_enter_new", "_record_function_exit",
             "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "is_same_size"}


def _workloads() -> dict:
    """name: (module, neuronet model maker, torch model maker, data(), optimizer name)."""
    import bench_cnn
    import bench_gpt
    import bench_mlp
    import bench_nanogpt
    import bench_resnet

    return {
        "mlp": (bench_mlp.neuronet_model, bench_mlp.torch_model, bench_mlp._data, "Adam"),
        "cnn": (bench_cnn.neuronet_model, bench_cnn.torch_model,
                lambda: bench_cnn._data(bench_cnn.TRAIN_BATCH), "Adam"),
        "gpt": (bench_gpt.neuronet_gpt(**bench_gpt.SHAPE), lambda: bench_gpt.torch_gpt(**bench_gpt.SHAPE),
                bench_gpt._data, "AdamW"),
        "resnet": (bench_resnet.neuronet_model, bench_resnet.torch_model, bench_resnet._data, "Adam"),
        "nanogpt": (bench_gpt.neuronet_gpt(**bench_nanogpt.SHAPE),
                    lambda: bench_gpt.torch_gpt(**bench_nanogpt.SHAPE), bench_nanogpt._data, "AdamW"),
    }


def count(step) -> collections.Counter:
    """The kernel-launching aten operators one call of ``step`` dispatches, by name."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counting(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name not in _METADATA:
                self.ops[name] += 1
                if _composite_out(func):
                    self.ops["copy_ (in the out= variant)"] += len(func._schema.returns)
            return func(*args, **(kwargs or {}))

    with Counting() as mode:
        step()
    return mode.ops


def _composite_out(func) -> bool:
    """Whether an out= variant has no kernel of its own (PyTorch generates it: the functional kernel, then
    a copy into each output): what it launches on a GPU is more than its one dispatch here shows."""
    import torch

    name = func.name()
    return any(arg.is_out for arg in func._schema.arguments) and \
        not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU") and \
        torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeExplicitAutograd")


def _steady(step):
    for _ in range(2):
        step()
    return count(step)


def neuronet_on_meta(make_model, data, optimizer: str, fused_attention: bool = False) -> collections.Counter:
    """One training step of neuronet's torch backend on the meta device, counted."""
    import neuronet as nn
    import neuronet.backend.torch_ops as torch_ops
    from neuronet.testing import meta_device

    with meta_device():
        ops = nn.backend.get_ops("torch")
        ops.fused_attention_devices = ("meta",) if fused_attention else ()
        torch_ops._sdpa_choice = lambda *args: torch_ops._SDPA_EFFICIENT  # float32 on CUDA
        x, y = data()
        nn.manual_seed(0)
        model = make_model(nn)
        model.compile(optimizer=getattr(nn, optimizer)(1e-3), loss=nn.CrossEntropyLoss())
        model.build(tuple(x.shape[1:]))
        model.to("torch")
        x, y = model.ops.asarray(x), model.ops.asarray(y)

        def step():
            model._forward_loss(x, y)
            model._backward_loss()
            model._optimizer_step()
        return _steady(step)


def pytorch_on_meta(make_model, data, optimizer: str) -> collections.Counter:
    """One PyTorch training step (``foreach`` optimizer, as on CUDA) on the meta device, counted."""
    import torch

    x, y = (torch.from_numpy(np.asarray(a)).to("meta") for a in data())
    model = make_model().to("meta")
    opt = getattr(torch.optim, optimizer)(model.parameters(), 1e-3, foreach=True)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        out = model(x)
        loss_fn(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
        opt.step()
    return _steady(step)


def main() -> None:
    names = list(_workloads())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="*", default=names, choices=names)
    parser.add_argument("--engine", help="(internal) count one engine of one workload in this process")
    parser.add_argument("--top", type=int, default=0, help="also print each count's most frequent operators")
    args = parser.parse_args()
    if args.engine:
        workload, engine = args.engine.split(":")
        make_nn, make_torch, data, optimizer = _workloads()[workload]
        try:
            ops = pytorch_on_meta(make_torch, data, optimizer) if engine == "pytorch" else \
                neuronet_on_meta(make_nn, data, optimizer, fused_attention=engine == "fused")
        except (NotImplementedError, RuntimeError) as error:  # (an operator without a meta kernel)
            print(f"n/a ({type(error).__name__}: {str(error).splitlines()[0][:60]})")
            return
        print(sum(ops.values()), *(f"{n}:{k}" for n, k in ops.most_common(args.top)))
        return
    import subprocess

    print("kernels launched by one training step (aten operators on the meta device; fewer is better)")
    print(f"{'workload':10s} {'neuronet-torch':>15s} {'+fused attention':>17s} {'pytorch eager':>14s}")
    for workload in args.workloads:
        cells = []
        for engine in ("neuronet", "fused", "pytorch"):
            if engine == "fused" and workload not in ("gpt", "nanogpt"):
                cells.append("-")
                continue
            # each engine in its own process: the meta device's patching stays in it
            run = subprocess.run([sys.executable, __file__, "--engine", f"{workload}:{engine}",
                                  "--top", str(args.top)], capture_output=True, text=True, check=True)
            cells.append(run.stdout.strip())
        first = [cell.split()[0] for cell in cells]
        print(f"{workload:10s} {first[0]:>15s} {first[1]:>17s} {first[2]:>14s}")
        if args.top:
            for engine, cell in zip(("neuronet", "fused", "pytorch"), cells, strict=True):
                print(f"    {engine}: {' '.join(cell.split()[1:])}")


if __name__ == "__main__":
    main()
