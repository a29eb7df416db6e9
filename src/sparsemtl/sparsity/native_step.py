"""ProxAdamW's CPU step as three vectorised native passes (``ProxAdamW(native_prox=True)``).

In eager PyTorch every elementwise step is a pass over the weights: torch's AdamW makes about
eight, the exact prox about twenty more (:mod:`.weighted_solver`), so on CPU the prox costs two to
three AdamW steps although it needs only the weights and Adam's second moment. ``torch.compile``
does not close the gap (its per-column reductions are compute-bound; see the README). Here one
tensor's step is, in C++ (``native/prox_step.cpp``, built on first use with
``torch.utils.cpp_extension``):

1. ``update_and_test``: AdamW's update of x, m and v (torch's formula) and, per column, the sums
   of the zero test (||d x||^2, max d, min d, ||x||^2, max v) and the Newton sums at the warm
   start (the group norms of the previous step, kept in the optimiser state);
2. ``newton_sums``, once per further Newton step (in training most tensors need one);
3. ``shrink``: x <- x theta d / (theta d + tau) per solved group, 0 per zero group.

Between the passes, per group, the zero test, the bounds and the Newton steps follow the eager
solver's rules (:mod:`.prox`), on vectors of one number per group. A tensor with a group that
needs the eager solver's scaled solve (extreme magnitudes, never seen in training) gets that
solver instead, after its update. The results agree with torch's AdamW followed by the eager prox
to float32 rounding, not to the bit: the eager step stays the default and the reference.

Building needs a C++ compiler and ninja (``pip install sparsemtl[native]``), once per machine and
torch version (about 25 s; torch caches the build).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .weighted_solver import default_rtol, group_test, newton_update, row_start, settled

#: Compiler flags per CPU capability tier torch reports (not -march=native: a build cached on a
#: shared disk must run on every machine of the tier).
_VECTOR_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma", "-mavx2"],
    "AVX2": ["-mavx2", "-mfma"],
}

#: Param-group settings the native step supports; other groups take torch's AdamW and the eager prox.
_PLAIN = {"amsgrad": False, "maximize": False, "capturable": False, "differentiable": False}


def build_tools() -> bool:
    """Whether a C++ compiler and ninja are at hand; the ``ninja`` package's binary (the
    ``native`` extra) is put on PATH, where torch's extension builder looks for it."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return False
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    return shutil.which("ninja") is not None and shutil.which("c++") is not None


@functools.cache
def extension() -> Any:
    """The compiled passes (built on first use; a missing compiler is a one-line error)."""
    from torch.utils.cpp_extension import load

    build_tools()
    source = Path(__file__).with_name("native") / "prox_step.cpp"
    capability = torch.backends.cpu.get_cpu_capability()  # the vector extensions torch itself uses here
    try:
        return load(
            name=f"sparsemtl_prox_step_{capability.lower()}",  # one build per tier: a shared cache stays valid
            sources=[str(source)],
            extra_cflags=["-O3", *_VECTOR_FLAGS.get(capability, []), "-fno-math-errno", "-fno-trapping-math"]
            + ["-fopenmp-simd"],
            verbose=False,
        )
    except (OSError, RuntimeError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"config key 'optim.native_prox': the native prox step could not be built "
            f"(it needs a C++ compiler and ninja): {first}"
        ) from None


def supports(group: dict[str, Any]) -> bool:
    """Whether ``group`` can take the native step: the group lasso on contiguous float32 CPU
    tensors, AdamW with decoupled weight decay and plain-number hyper-parameters, none of
    amsgrad, maximize, capturable, differentiable or fused."""
    if group["prox"].get("penalty", "group_lasso") != "group_lasso" or group.get("fused"):
        return False
    if any(group.get(key, value) != value for key, value in _PLAIN.items()):
        return False
    if not group.get("decoupled_weight_decay", True):
        return False
    if any(isinstance(n, torch.Tensor) for n in (group["lr"], *group["betas"], group["eps"], group["weight_decay"])):
        return False
    return all(
        p.device.type == "cpu"
        and p.dtype == torch.float32
        and p.is_contiguous()
        and (p.grad is None or (p.grad.layout == torch.strided and p.grad.is_contiguous()))
        for p in group["params"]
    )


def init_state(state: dict[str, Any], param: torch.Tensor) -> None:
    """AdamW's state before a parameter's first step, as torch creates it (not capturable)."""
    state["step"] = torch.tensor(0.0, dtype=torch.float32)
    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def native_prox_step_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict[str, Any]],
    dims: list[int],
    group: dict[str, Any],
    taus: list[torch.Tensor],
    starts: list[torch.Tensor],
    max_iter: int = 50,
) -> list[bool]:
    """AdamW's update of every tensor of ``params`` (``states``: AdamW's state of each, created
    by :func:`init_state` before its first step) and the prox of their groups (thresholds
    ``taus``, one tensor per parameter) in Adam's metric, warm-started from ``starts``, which
    then hold the new group norms. Returns per tensor whether its prox is done: False where a
    group needs the eager solver's scaled solve (to be run on the updated tensor)."""
    native = extension()
    lr, (beta1, beta2), eps = float(group["lr"]), group["betas"], float(group["eps"])
    mats, widths, scales = [], [], []
    sums = []
    for p, grad, state, dim, tau, start in zip(params, grads, states, dims, taus, starts):
        state["step"] += 1
        step = float(state["step"])
        correction = 1 - beta2**step
        scales.append(1.0 if group["prox_metric"] == "reference" else 1 / correction**0.5)
        scalars = [1 - lr * group["weight_decay"], 1 - beta1, beta2, 1 - beta2, -lr / (1 - beta1**step)]
        scalars += [1 / correction**0.5, scales[-1], eps]
        groups, width = p.shape[dim], math.prod(p.shape[dim + 1 :])
        rows = p.numel() // (groups * width)
        x, g, m, v = (t.view(rows, -1) for t in (p.detach(), grad, state["exp_avg"], state["exp_avg_sq"]))
        mats.append((x, v))
        widths.append(width)
        sums.append(native.update_and_test(x, g, m, v, scalars, tau.float(), start.float(), width))
    sizes = [len(t) for t in taus]
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))

    def per_tensor(mask: torch.Tensor) -> list[bool]:
        return (torch.zeros(len(sizes)).index_add_(0, owner, mask.float()) > 0).tolist()

    def sums_at(theta: torch.Tensor, which: list[bool], s: torch.Tensor, t: torch.Tensor) -> None:
        """Newton sums at ``theta`` of the tensors ``which``, written into ``s`` and ``t``."""
        for k, (first, size) in enumerate(zip(offsets, sizes)):
            if which[k]:
                x, v = mats[k]
                part = native.newton_sums(
                    x, v, scales[k], eps, tau_all[first : first + size], theta[first : first + size], widths[k]
                )
                s[first : first + size], t[first : first + size] = part[0], part[1]

    offsets = [0, *itertools.accumulate(sizes)][:-1]
    sumsq, dmax, dmin, xsq, vmax, s, t = torch.cat(sums, dim=1)
    tau_all, start = torch.cat(taus).float(), torch.cat(starts).float()
    tau = torch.where(vmax > 0, tau_all, torch.zeros_like(tau_all))  # never informed: no penalty (as ProxAdamW)
    group_sizes = torch.tensor([p.numel() // size for p, size in zip(params, sizes)]).repeat_interleave(
        torch.tensor(sizes)
    )
    test = group_test(sumsq, dmax, dmin, tau, group_sizes)
    lower, upper, keep, zero = test.lower, test.upper, test.keep, test.zero
    done = [not risky for risky in per_tensor(test.risky)]
    solve = test.solve & torch.tensor(done).repeat_interleave(torch.tensor(sizes))  # risky tensors: eager
    theta = row_start(start, lower, upper)
    sums_at(theta, per_tensor(solve & (theta != start)), s, t)  # warm starts out of bounds: the sums at theta
    active, step_tol = solve.clone(), 0.1 * math.sqrt(default_rtol(torch.float32))
    for newton in range(max_iter):
        new = newton_update(theta, s, t, lower, upper)
        done_now = settled(theta, new, step_tol, newton == 0)
        theta = torch.where(active, new, theta)
        active &= ~done_now
        busy = per_tensor(active)
        if not any(busy):
            break
        sums_at(theta, busy, s, t)
    shrink_theta = torch.where(solve, theta, torch.ones_like(theta))  # tau = 0 and theta = 1: x stays
    shrink_tau = torch.where(solve, tau, torch.zeros_like(tau))
    norms = torch.where(keep, xsq.sqrt(), torch.where(zero, torch.zeros_like(theta), theta))
    for k, (first, size) in enumerate(zip(offsets, sizes)):
        if done[k]:
            x, v = mats[k]
            part = slice(first, first + size)
            native.shrink(x, v, scales[k], eps, shrink_tau[part], shrink_theta[part], zero[part].float(), widths[k])
            starts[k].copy_(norms[part])
    return done
