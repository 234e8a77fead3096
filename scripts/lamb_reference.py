#!/usr/bin/env python3
"""An independent LAMB reference (numpy, float64) for the trainer's LAMB test.

Writes tests/fixtures/lamb/reference.json: the initial weights of a `dense` layer (weight
[2, 3], decayed; bias [3], not), the gradients of five steps, the learning rates and
hyper-parameters, and the weights after the five steps, computed as NVIDIA's apex FusedLAMB
does by default (bias correction on, use_nvlamb off), after clipping the gradients to one
global norm as torch.nn.utils.clip_grad_norm_ (max / (norm + 1e-6)):

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    decayed tensors: u += wd w;  u *= |w| / |u| (1 where either norm is 0)
    w -= lr u

The initial weights and gradients are rounded to float32 first, the values the Rust test
feeds its f32 optimizer. Usage: python3 scripts/lamb_reference.py
"""
import json
import pathlib

import numpy as np

rng = np.random.default_rng(20261202)
shapes = {"dense.weight": (2, 3), "dense.bias": (3,)}
decays = {"dense.weight": True, "dense.bias": False}
hyper = {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-6, "weight_decay": 0.01, "max_grad_norm": 1.0}
lrs = [0.01, 0.02, 0.03, 0.02, 0.01]
# Gradient sizes: the first two steps are clipped (global norm above 1), the others not.
sizes = [3.0, 1.5, 0.2, 0.1, 0.05]


def f32(x):
    return np.asarray(x, dtype=np.float32).astype(np.float64)


initial = {name: f32(rng.normal(size=shape)) for name, shape in shapes.items()}
grads = [{name: f32(rng.normal(size=shape) * size) for name, shape in shapes.items()} for size in sizes]

w = {name: value.copy() for name, value in initial.items()}
m = {name: np.zeros(shape) for name, shape in shapes.items()}
v = {name: np.zeros(shape) for name, shape in shapes.items()}
b1, b2, eps, wd = hyper["beta1"], hyper["beta2"], hyper["epsilon"], hyper["weight_decay"]
for t, (lr, g) in enumerate(zip(lrs, grads), start=1):
    norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
    clip = min(1.0, hyper["max_grad_norm"] / (norm + 1e-6))
    for name in shapes:
        grad = g[name] * clip
        m[name] = b1 * m[name] + (1 - b1) * grad
        v[name] = b2 * v[name] + (1 - b2) * grad**2
        u = (m[name] / (1 - b1**t)) / (np.sqrt(v[name] / (1 - b2**t)) + eps)
        if decays[name]:
            u = u + wd * w[name]
            w_norm, u_norm = np.linalg.norm(w[name]), np.linalg.norm(u)
            u = u * (w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
        w[name] = w[name] - lr * u

flat = lambda d: {name: value.reshape(-1).tolist() for name, value in d.items()}
out = {
    "hyper": hyper,
    "learning_rates": lrs,
    "shapes": {name: list(shape) for name, shape in shapes.items()},
    "initial": flat(initial),
    "grads": [flat(g) for g in grads],
    "final": flat(w),
}
path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/lamb/reference.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
