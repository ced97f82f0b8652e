"""The key/value-cache tree decoder of token-level RepExp: one sequence at a time (paper.md §2).

At every step t of a response the next-token distribution is filtered with top-k then top-p (the
transformers warpers, in ``generate``'s order); for every surviving candidate v_j the last-layer
state h_j of (prompt, y<t, v_j) is computed, and the token is sampled from

    z̃ = z + β·b,   b_j = sqrt(h̃_jᵀ Σ⁻¹ h̃_j),   h̃_j = h_j − μ,

filtered tokens staying at −∞ (Σ⁻¹ and μ: :class:`repexp.elliptical.CentredInverse`).

The candidates of a step are one batch of K tokens on the prefix's key/value cache, laid out as a
tree: every candidate sits at the same position and attends to the prefix and to itself only (a
custom 4-D attention mask), so the prefix is never re-run. The chosen candidate's keys/values are
then appended to the cache and its state gives the next step's logits through the LM head: a bonus
step costs one forward of K tokens, a plain step one of 1 token.
"""

from __future__ import annotations

import numpy as np

from repexp.elliptical import CentredInverse
from repexp.models import cut_at_eos
from repexp.tokenlevel.settings import Settings


class Decoder:
    """One model, decoding one sequence at a time on a key/value cache, with or without the bonus.

    ``model`` is a causal LM (``repexp.models.load_model``); its base model gives the last-layer
    states (after the final norm) and its output embedding the logits.
    """

    def __init__(self, model, eos_ids, settings: Settings):
        from transformers import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

        self.model, self.settings = model, settings
        self.base = model.base_model
        self.head = model.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.eos_ids = set(int(e) for e in eos_ids)
        # generate()'s order: top-k, then top-p; filtered tokens are -inf
        self.warpers = LogitsProcessorList(
            [TopKLogitsWarper(settings.top_k), TopPLogitsWarper(settings.top_p)]
        )

    # ---------------------------------------------------------------- cache helpers
    @staticmethod
    def _layers(cache):
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

        layers = cache.layers
        if any(type(layer) is not DynamicLayer for layer in layers):
            bad = {type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer}
            if bad & {DynamicSlidingWindowLayer.__name__}:
                raise NotImplementedError(
                    "token-level RepExp needs full-attention layers (no sliding window)"
                )
            raise NotImplementedError(
                f"token-level RepExp does not support cache layers {sorted(bad)}"
            )
        return layers

    def _forward(self, ids, cache, **kw):
        return self.base(
            input_ids=ids, past_key_values=cache, use_cache=True, **kw
        ).last_hidden_state

    def logits(self, state):
        """Next-token logits (float32, (1, V)) from a last-layer state (d,)."""
        return self.head(state[None]).float()

    def candidate_states(self, cache, prefix_len: int, candidates):
        """Last-layer states (K, d) of (prefix, v_j) for every candidate v_j, in batches of
        ``candidate_batch`` on the prefix's cache; returns them with each layer's candidate keys and
        values (the cache is left holding the prefix only)."""
        import torch

        states, keys, values = [], [], []
        min_value = torch.finfo(self.dtype).min
        for start in range(0, len(candidates), self.settings.candidate_batch):
            chunk = candidates[start : start + self.settings.candidate_batch]
            k = len(chunk)
            mask = torch.full(
                (1, 1, k, prefix_len + k), min_value, dtype=self.dtype, device=self.device
            )
            mask[..., :prefix_len] = 0
            mask[0, 0, torch.arange(k), prefix_len + torch.arange(k)] = 0  # sees itself
            pos = torch.full((1, k), prefix_len, dtype=torch.long, device=self.device)
            h = self._forward(chunk[None], cache, attention_mask=mask, position_ids=pos)[0]
            states.append(h)
            layers = self._layers(cache)
            keys.append([layer.keys[..., prefix_len:, :] for layer in layers])
            values.append([layer.values[..., prefix_len:, :] for layer in layers])
            for layer in layers:
                layer.keys, layer.values = (
                    layer.keys[..., :prefix_len, :],
                    layer.values[..., :prefix_len, :],
                )
        return torch.cat(states), keys, values

    def _append_candidate(self, cache, keys, values, j: int) -> None:
        import torch

        batch, row = divmod(j, self.settings.candidate_batch)
        for layer, k, v in zip(self._layers(cache), keys[batch], values[batch], strict=True):
            layer.keys = torch.cat([layer.keys, k[..., row : row + 1, :]], dim=-2)
            layer.values = torch.cat([layer.values, v[..., row : row + 1, :]], dim=-2)

    # ---------------------------------------------------------------- one response
    def generate(
        self,
        prompt_ids: list[int],
        *,
        generator,
        inverse: CentredInverse | None = None,
        beta: float = 0.0,
        need_states: bool = False,
    ) -> dict:
        """One response. With ``inverse`` (Σ of the completed responses) every step computes the
        candidates' states and adds β·bonus to their logits; without it, plain sampling.

        Returns ``response_ids``, ``finish_reason``, the (T, d) float32 token ``states`` (when
        ``inverse`` is given or ``need_states``), ``mean_bonus`` and ``mean_candidates``.
        """
        import torch
        from transformers import DynamicCache

        s = self.settings
        bonus_on = inverse is not None
        sigma_inv = inverse.inverse() if bonus_on else None
        cache = DynamicCache()
        with torch.inference_mode():
            ids = torch.tensor([prompt_ids], device=self.device)
            h = self._forward(ids, cache)[0, -1]
            logits = self.logits(h)
            response, states, bonuses, n_cands = [], [], [], []
            for _ in range(s.max_new_tokens):
                scores = self.warpers(ids, logits)
                if bonus_on:
                    cands = torch.nonzero(torch.isfinite(scores[0])).squeeze(1)
                    c_states, c_keys, c_values = self.candidate_states(cache, ids.shape[1], cands)
                    b = inverse.bonus(c_states, sigma_inv)
                    scores = scores.clone()
                    scores[0, cands] = scores[0, cands] + (beta * b).to(scores.dtype)
                    probs = torch.softmax(scores, dim=-1)
                    token = torch.multinomial(probs, num_samples=1, generator=generator)
                    j = int(torch.nonzero(cands == token[0, 0])[0, 0])
                    self._append_candidate(cache, c_keys, c_values, j)
                    h = c_states[j]
                    states.append(h)
                    bonuses.append(float(b[j]))
                    n_cands.append(len(cands))
                    logits = self.logits(h)
                else:
                    probs = torch.softmax(scores, dim=-1)
                    token = torch.multinomial(probs, num_samples=1, generator=generator)
                t = int(token[0, 0])
                response.append(t)
                ids = torch.cat([ids, token], dim=1)
                done = t in self.eos_ids or len(response) == s.max_new_tokens
                if bonus_on:  # the chosen candidate's state is already known
                    if done:
                        break
                    continue
                if done and not need_states:
                    break
                h = self._forward(token, cache)[0, -1]  # the state at the new token's position
                if need_states:
                    states.append(h)
                if done:
                    break
                logits = self.logits(h)
        out = {
            "response_ids": response,
            "finish_reason": cut_at_eos(response, self.eos_ids)[1],
            "mean_bonus": float(np.mean(bonuses)) if bonuses else float("nan"),
            "mean_candidates": float(np.mean(n_cands)) if n_cands else float("nan"),
        }
        if states:
            out["states"] = torch.stack(states).float().cpu()
        return out


def make_generator(device, seed: int):
    import torch

    return torch.Generator(device=device).manual_seed(int(seed))
