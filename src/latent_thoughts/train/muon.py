"""Muon for a transformer's hidden matrices, AdamW for everything else, as one optimizer.

Muon (Jordan et al., 2024; "Muon is Scalable for LLM Training", Liu et al., 2025) replaces the
update of a 2-D weight by the nearest semi-orthogonal matrix to its Nesterov momentum (five
Newton-Schulz iterations), so that every direction of the matrix moves at the same rate; in small
language models it reaches a given loss in fewer tokens than AdamW. It only suits the matrices
*inside* the network: embeddings, the output head, norms and biases keep AdamW.

``torch.optim.Muon`` exists, but it orthogonalises in bf16, which CPUs without bf16 instructions
emulate about 80 times slower than fp32 (``docs/testbed.md``, finding 1). Here the iteration runs in
fp32 on a CPU and in bf16 on a GPU. The update is scaled as in Liu et al. (``0.2 * sqrt(max(A, B))``),
so a Muon matrix moves about as far per step as AdamW would move it at the same learning rate, and
``lr`` keeps its meaning; ``muon_lr_scale`` multiplies it for the Muon matrices only.

Both halves live in one ``torch.optim.Optimizer`` so that the Hugging Face Trainer, its learning-rate
scheduler (which scales every group's ``lr``) and its checkpoints (``state_dict``) handle it like
AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
"""Coefficients of the quintic Newton-Schulz iteration (Jordan et al.)."""


def orthogonalize(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximation of ``U V^T`` for ``matrix = U S V^T`` (its singular values pushed to about 1).

    Runs in bf16 on a GPU and in fp32 elsewhere; returns the input's dtype.
    """
    a, b, c = NEWTON_SCHULZ
    dtype = torch.bfloat16 if matrix.is_cuda else torch.float32
    x = matrix.to(dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the wide orientation: X X^T is then the smaller product
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.T
    return x.to(matrix.dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer, two rules: groups with ``muon: True`` (2-D hidden matrices) take Muon steps, the
    others AdamW steps. Every group has ``lr`` and ``weight_decay`` (decoupled, as in AdamW).

    ``muon_groups`` and ``adamw_groups`` are lists of ``{"params": [...], "weight_decay": w}``.
    """

    def __init__(
        self,
        muon_groups: Iterable[dict],
        adamw_groups: Iterable[dict],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        momentum: float = 0.95,
        muon_lr_scale: float = 1.0,
        newton_schulz_steps: int = 5,
    ) -> None:
        groups = [{**group, "muon": True, "lr": lr * muon_lr_scale} for group in muon_groups]
        groups += [{**group, "muon": False} for group in adamw_groups]
        for group in groups:
            if group["muon"] and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon groups take 2-D matrices only")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "momentum": momentum,
            "weight_decay": 0.0,
            "newton_schulz_steps": newton_schulz_steps,
        }
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if group["muon"]:
                    self._muon_update(param, group)
                else:
                    self._adamw_update(param, group)
        return loss

    def _muon_update(self, param: torch.Tensor, group: dict) -> None:
        state, grad = self.state[param], param.grad
        assert grad is not None
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        buffer = state["momentum_buffer"]
        buffer.mul_(group["momentum"]).add_(grad)
        nesterov = grad.add(buffer, alpha=group["momentum"])
        update = orthogonalize(nesterov, group["newton_schulz_steps"])
        param.mul_(1 - group["lr"] * group["weight_decay"])
        scale = 0.2 * math.sqrt(max(param.shape))  # RMS of an AdamW update (Liu et al.)
        param.add_(update, alpha=-group["lr"] * scale)

    def _adamw_update(self, param: torch.Tensor, group: dict) -> None:
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].lerp_(param.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
        param.mul_(1 - group["lr"] * group["weight_decay"])
        param.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / (1 - beta1**step))


def split_parameters(
    model: torch.nn.Module, decay_names: set[str], weight_decay: float
) -> tuple[list[dict], list[dict]]:
    """(Muon groups, AdamW groups) of ``model``: the 2-D weights of its hidden layers go to Muon (with
    ``weight_decay``); embeddings, the output head, norms and biases to AdamW (``weight_decay`` only
    for the names in ``decay_names``, as the Trainer's AdamW does)."""
    outside = set()
    for getter in ("get_output_embeddings", "get_input_embeddings"):
        embedding = getattr(model, getter)() if hasattr(model, getter) else None
        if embedding is not None:
            outside.add(id(embedding.weight))
    muon, decay, no_decay = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim == 2 and id(param) not in outside:
            muon.append(param)
        elif name in decay_names:
            decay.append(param)
        else:
            no_decay.append(param)
    adamw = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [{"params": muon, "weight_decay": weight_decay}], [group for group in adamw if group["params"]]
