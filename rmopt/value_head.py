"""The PPO policy: a causal LM with a scalar value head, and its reference model.

With ``num_layers_unfrozen = n > 0`` only the top ``n`` transformer layers, the final norm and the
output head train (as the released trlx "hydra" models); the embeddings and the bottom layers are
frozen and *shared* with the reference model, which holds its own frozen copy of only the top ``n``
layers, the final norm and the head. The reference therefore costs no second copy of the trunk.
With ``num_layers_unfrozen = -1`` the whole model trains and the reference is a full frozen copy.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rmopt.errors import RmoptError
from rmopt.packing import pack, packed_bottom, packed_hidden_states, supports_packing
from rmopt.rlhf import entropy_from_logits, logprobs_from_logits, token_kl_from_logits


def transformer_layers(lm) -> nn.ModuleList:
    """The stack of transformer blocks of a Hugging Face causal LM (``gpt_neox.layers`` for Pythia)."""
    n = lm.config.num_hidden_layers
    for module in lm.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise RmoptError(f"cannot find the {n} transformer layers of {type(lm).__name__}")


def freeze_bottom(lm, num_layers_unfrozen: int) -> list[nn.Parameter]:
    """Freeze all but the top ``num_layers_unfrozen`` layers, the final norm and the output head.

    Returns the frozen parameters (empty for ``-1``: everything trains). If the output head is tied
    to the input embeddings it stays frozen with them.
    """
    layers = transformer_layers(lm)
    if num_layers_unfrozen == -1:
        return []
    if not 1 <= num_layers_unfrozen <= len(layers):
        raise RmoptError(
            f"num_layers_unfrozen={num_layers_unfrozen} is not valid; expected -1 (train all) or 1..{len(layers)}"
        )
    frozen_modules = [lm.get_input_embeddings(), *layers[: len(layers) - num_layers_unfrozen]]
    frozen = {id(p): p for m in frozen_modules for p in m.parameters()}
    for p in frozen.values():
        p.requires_grad_(False)
    return list(frozen.values())


def build_reference(lm, frozen: list[nn.Parameter]) -> nn.Module:
    """A frozen copy of ``lm`` whose ``frozen`` parameters are the very same tensors (shared, not copied)."""
    memo = {id(p): p for p in frozen}  # deepcopy returns memo entries as they are
    reference = copy.deepcopy(lm, memo)
    reference.requires_grad_(False)
    return reference.eval()


class PolicyWithValueHead(nn.Module):
    """A causal LM plus a linear value head on its last hidden state, in one forward pass."""

    def __init__(self, lm, value_head: nn.Linear | None = None):
        super().__init__()
        self.lm = lm
        if value_head is None:
            value_head = nn.Linear(lm.config.hidden_size, 1)
            nn.init.normal_(value_head.weight, std=0.02)
            nn.init.zeros_(value_head.bias)
        self.value_head = value_head

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def answer_states(lm, batch: dict[str, torch.Tensor], packed: bool = False) -> torch.Tensor:
    """Hidden states [B, A, H] that predict the answer tokens of a rollout batch (position - 1), one trunk forward.

    ``batch`` comes from :func:`rmopt.modules.ppo.rollout_tensors`: ``input_ids``, ``attention_mask``,
    ``position_ids`` [B, S], ``answer_positions`` and ``answer_mask`` [B, A]. With ``packed`` (GPT-NeoX only) the
    forward runs on the real tokens alone (:mod:`rmopt.packing`; about 40% of a toy rollout batch is padding) and
    its last layer only on the states that predict real answer tokens: the same states up to float rounding,
    zero at padded answer positions. Otherwise the padded forward. Padded answer positions hold values for the
    caller to mask out.
    """
    packing = pack(batch["attention_mask"]) if packed and supports_packing(lm) else None
    if packing is not None:
        return _packed_answer_states(lm, batch, packing)
    hidden = lm.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
    ).last_hidden_state
    index = (batch["answer_positions"] - 1).unsqueeze(-1).expand(-1, -1, hidden.size(-1))
    return torch.gather(hidden, 1, index)


def paired_answer_states(lm, reference, batch: dict[str, torch.Tensor], packed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`answer_states` of a policy and of its reference; with ``packed``, the bottom layers they share (the
    very same tensors, :func:`build_reference`) run once. For rollouts and evaluations (no dropout there)."""
    usable = packed and supports_packing(lm) and supports_packing(reference)
    shared = min(shared_layers(lm, reference), len(transformer_layers(lm)) - 1) if usable else 0  # the last layer
    packing = pack(batch["attention_mask"]) if shared else None  # reads only the answers
    if packing is None:
        return answer_states(lm, batch, packed), answer_states(reference, batch, packed)
    bottom = (shared, packed_bottom(lm, batch["input_ids"], packing, shared))
    return _packed_answer_states(lm, batch, packing, bottom), _packed_answer_states(reference, batch, packing, bottom)


def shared_layers(lm, reference) -> int:
    """How many bottom transformer layers two models share, with their input embeddings, as the same tensors."""
    if lm.get_input_embeddings().weight is not reference.get_input_embeddings().weight:
        return 0
    n = 0
    for a, b in zip(transformer_layers(lm), transformer_layers(reference), strict=True):
        pa, pb = list(a.parameters()), list(b.parameters())
        if len(pa) != len(pb) or any(x is not y for x, y in zip(pa, pb, strict=True)) or a.training or b.training:
            break
        n += 1
    return n


def _packed_answer_states(lm, batch: dict[str, torch.Tensor], packing, start=None) -> torch.Tensor:
    input_ids, mask = batch["input_ids"], batch["answer_mask"]
    (B, T), A = input_ids.shape, mask.size(1)
    packed_index = torch.full((B * T,), -1, dtype=torch.long, device=input_ids.device)
    packed_index[packing.source] = torch.arange(packing.source.numel(), device=input_ids.device)
    flat = batch["answer_positions"] - 1 + torch.arange(B, device=input_ids.device)[:, None] * T  # [B, A]
    keep = packed_index[flat[mask]]  # each real answer token's predicting state, a real token
    states = packed_hidden_states(lm, input_ids, packing, keep=keep, start=start)  # [K, H], row by row
    slots = mask.flatten().nonzero().squeeze(1)
    return states.new_zeros(B * A, states.size(-1)).index_copy(0, slots, states).view(B, A, -1)


def answer_forward(
    lm,
    batch: dict[str, torch.Tensor],
    value_head: nn.Module | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    states: torch.Tensor | None = None,
    packed: bool = False,
) -> dict[str, torch.Tensor]:
    """Log-probs (and values, entropy) of the answer tokens of a rollout batch, from one trunk forward.

    The head runs only on the hidden states that predict answer tokens (:func:`answer_states`), not
    on the whole sequence. Values are read at the same states: V(state before emitting answer token t).
    """
    states = answer_states(lm, batch, packed) if states is None else states  # [B, A, H]
    logits = lm.get_output_embeddings()(states).float()
    if temperature != 1.0:
        logits = logits / temperature
    out = {"logprobs": logprobs_from_logits(logits, batch["answer_ids"])}
    if value_head is not None:
        out["values"] = value_head(states.to(value_head.weight.dtype)).squeeze(-1).float()
    if with_entropy:
        out["entropy"] = entropy_from_logits(logits.detach())  # a diagnostic only: no graph
    return out


@torch.no_grad()
def answer_kl(lm, reference, batch: dict[str, torch.Tensor], temperature: float = 1.0, rows: int = 16,
              packed: bool = False) -> dict[str, torch.Tensor]:
    """Per-token KL(pi || pi_ref) along sampled answers, both policies at ``temperature``: ``{"exact", "k1"}`` [B, A].

    ``exact`` sums over the vocabulary at each answer position (:func:`rmopt.rlhf.token_kl_from_logits`);
    ``k1`` is log pi - log pi_ref of the sampled token. The vocabulary-sized logits exist for ``rows``
    answers at a time. Padding positions hold values to be masked out by the caller.
    """
    states, ref_states = paired_answer_states(lm, reference, batch, packed)
    head, ref_head = lm.get_output_embeddings(), reference.get_output_embeddings()
    exact, k1 = [], []
    for i in range(0, states.size(0), rows):
        logits = head(states[i : i + rows]).float() / temperature
        ref_logits = ref_head(ref_states[i : i + rows]).float() / temperature
        ids = batch["answer_ids"][i : i + rows]
        exact.append(token_kl_from_logits(logits, ref_logits))
        k1.append(logprobs_from_logits(logits, ids) - logprobs_from_logits(ref_logits, ids))
    return {"exact": torch.cat(exact), "k1": torch.cat(k1)}
