"""Muon for the hidden matrices, AdamW for the rest (latent_thoughts.train.muon)."""

from __future__ import annotations

import copy

import pytest
import torch

from latent_thoughts.train.muon import MuonWithAdamW, orthogonalize, split_parameters
from tests.conftest import tiny_llama


def loss_of(model: torch.nn.Module, seed: int) -> torch.Tensor:
    """The causal-LM loss of a seeded batch of 4 x 16 ids below 50."""
    ids = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(seed))
    return model(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize("shape", [(32, 32), (32, 80), (80, 32)])
def test_orthogonalize_pushes_every_singular_value_near_one(shape: tuple[int, int]) -> None:
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 5
    values = torch.linalg.svdvals(orthogonalize(matrix))
    # The quintic iteration trades exactness for speed: singular values land in about [0.7, 1.2].
    assert values.min() > 0.6 and values.max() < 1.25
    assert orthogonalize(matrix).dtype == matrix.dtype


def test_hidden_matrices_go_to_muon_and_the_rest_to_adamw(tiny_tokenizer) -> None:
    model = tiny_llama(tiny_tokenizer)
    decay = {name for name, p in model.named_parameters() if "norm" not in name}
    muon_groups, adamw_groups = split_parameters(model, decay, weight_decay=0.1)
    names = {id(p): name for name, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon_groups[0]["params"]}
    assert muon_names and all(".layers." in name and name.endswith("proj.weight") for name in muon_names)
    adamw_names = {names[id(p)] for group in adamw_groups for p in group["params"]}
    assert "model.embed_tokens.weight" in adamw_names  # the output head is tied to it here
    assert all(p is not model.get_output_embeddings().weight for p in muon_groups[0]["params"])
    assert {n for n in adamw_names if "norm" in n} and muon_names.isdisjoint(adamw_names)
    assert [g["weight_decay"] for g in (*muon_groups, *adamw_groups)] == [0.1, 0.1, 0.0]


def test_the_adamw_half_steps_exactly_as_torch_adamw(tiny_tokenizer) -> None:
    ours, theirs = tiny_llama(tiny_tokenizer), tiny_llama(tiny_tokenizer)
    decay = {name for name, _ in ours.named_parameters()}
    _, adamw_groups = split_parameters(ours, decay, weight_decay=0.01)
    optimizer = MuonWithAdamW([], adamw_groups, lr=1e-2, betas=(0.9, 0.95))
    _, their_groups = split_parameters(theirs, decay, weight_decay=0.01)
    reference = torch.optim.AdamW(their_groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for step in range(3):
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            loss_of(model, step).backward()
            opt.step()
    for (name, mine), (_, reference_param) in zip(
        ours.named_parameters(), theirs.named_parameters(), strict=True
    ):
        if "proj" not in name:  # the hidden matrices were in no group here
            torch.testing.assert_close(mine, reference_param, rtol=1e-5, atol=1e-6, msg=name)


def test_muon_lowers_the_loss_and_resumes_from_its_state_dict(tiny_tokenizer) -> None:
    model = tiny_llama(tiny_tokenizer)
    decay = {name for name, _ in model.named_parameters()}
    optimizer = MuonWithAdamW(*split_parameters(model, decay, 0.01), lr=3e-3, muon_lr_scale=2.0)
    assert {g["lr"] for g in optimizer.param_groups if g["muon"]} == {6e-3}
    first = loss_of(model, 0).item()
    for step in range(20):
        optimizer.zero_grad()
        loss_of(model, 0).backward()
        optimizer.step()
        if step == 9:  # a checkpoint halfway: the copy must continue exactly as the original
            saved_model, saved_state = copy.deepcopy(model), copy.deepcopy(optimizer.state_dict())
    assert loss_of(model, 0).item() < 0.8 * first
    resumed = MuonWithAdamW(*split_parameters(saved_model, decay, 0.01), lr=3e-3, muon_lr_scale=2.0)
    resumed.load_state_dict(saved_state)
    for _ in range(10):
        resumed.zero_grad()
        loss_of(saved_model, 0).backward()
        resumed.step()
    for mine, theirs in zip(model.parameters(), saved_model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_muon_refuses_a_non_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        MuonWithAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))]}], [], lr=1e-3)
