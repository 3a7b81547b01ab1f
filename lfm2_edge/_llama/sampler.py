"""Choosing tokens: llama.cpp sampler chains (with their two hottest steps done here
when that picks the same token), sampling from saved logits, and log-probabilities."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import llama_cpp
import numpy as np

from lfm2_edge.chat.sampling import Sampling
from lfm2_edge.errors import GenerationError

__all__ = ["Sampler", "sample_logits", "sampler_chain", "token_logprobs"]


class Sampler:
    """Picks one answer's tokens: its llama.cpp sampler ``chain``, with two steps done
    here with numpy, to the same float32 result, when nothing in the chain comes before
    them (no logit bias):

    - the repetition penalty: llama.cpp's looks up every one of the vocabulary's 65,536
      candidates in a hash map of the tokens it counts (0.15 ms a token on a 2-core x86,
      most of a greedy step's sampling); here only those tokens' logits are scaled, and
      put back after the pick, so the logits stay the model's own (for log-probabilities
      and saved states). It counts what transformers' ``RepetitionPenaltyLogitsProcessor``
      and vLLM count: every token of the prompt (``prompt``) and of the answer so far;
    - greedy decoding (no grammar, no presence or frequency penalty): the first largest
      logit, as ``llama_sampler_init_greedy`` picks it, without copying the vocabulary
      into a candidate array (and without the penalty's work when the pick is not a
      token it would lower).
    """

    def __init__(
        self, chain: int, n_vocab: int, params: Sampling, *, grammar: bool, prompt: Sequence[int] = ()
    ) -> None:
        self.chain = chain
        self.n_vocab = n_vocab
        local = not params.logit_bias
        with np.errstate(over="ignore", under="ignore"):
            rp = np.float32(params.repetition_penalty)  # llama.cpp's is a float too
        # one that is 0 or infinite as a float32 makes NaN logits: that is left to llama.cpp
        self.penalty = rp if local and rp != 1 and 0 < rp < np.inf else None
        self.greedy = (
            local
            and params.temperature <= 0
            and not grammar
            and not (params.frequency_penalty or params.presence_penalty)
        )
        # the tokens the penalty counts: a flag per vocabulary entry, and their ids
        self._seen = np.zeros(n_vocab if self.penalty is not None else 0, dtype=bool)
        self._seen_ids: list[int] = []
        self._seen_arr: Any = None
        self.remember(prompt)
        self._local = self.penalty is not None or self.greedy  # else the chain does it all

    def remember(self, tokens: Iterable[int]) -> None:
        """Count ``tokens`` for the repetition penalty (the prompt's, then each pick)."""
        if self.penalty is None:
            return
        for t in tokens:
            if 0 <= t < self.n_vocab and not self._seen[t]:
                self._seen[t] = True
                self._seen_ids.append(t)
                self._seen_arr = None

    def sample(self, ctx: int, row: int = -1) -> int:
        """Pick (and accept) a token from row ``row`` of the last decode's logits (-1: its
        last), as ``llama_sampler_sample`` does."""
        if not self._local:
            return int(llama_cpp.llama_sampler_sample(self.chain, ctx, row))
        logits = _row_view(llama_cpp.llama_get_logits_ith(ctx, row), self.n_vocab)
        return self._pick(logits, lambda: int(llama_cpp.llama_sampler_sample(self.chain, ctx, row)))

    def sample_saved(self, saved: ctypes.Array[ctypes.c_float]) -> int:
        """Pick (and accept) a token from saved logits, which stay as they are."""
        if not self._local:
            return sample_logits(self.chain, saved, self.n_vocab)
        logits = np.frombuffer(memoryview(saved), dtype=np.float32, count=self.n_vocab).copy()
        return self._pick(logits, lambda: sample_logits(self.chain, logits, self.n_vocab))

    def _pick(self, logits: Any, chain: Callable[[], int]) -> int:
        if self.greedy and (self.penalty is None or self.penalty >= 1):
            # a penalty >= 1 only lowers logits: when the first largest logit's token is not
            # one it lowers, it is still the first largest after it
            token = _first_largest(logits)
            if token >= 0 and (self.penalty is None or not self._seen[token]):
                self.remember((token,))
                return token
        ids = kept = None
        if self.penalty is not None and self._seen_ids:
            if self._seen_arr is None:
                self._seen_arr = np.array(self._seen_ids, dtype=np.intp)
            ids = self._seen_arr
            kept = logits[ids]
            # llama_sampler_penalties_apply, in float32: logit <= 0 ? logit * p : logit / p
            with np.errstate(over="ignore", invalid="ignore"):  # as in C: inf, NaN
                logits[ids] = np.where(kept <= 0, kept * self.penalty, kept / self.penalty)
        try:
            token = _first_largest(logits) if self.greedy else -1
            if token < 0:
                token = chain()
        finally:
            if ids is not None:
                logits[ids] = kept
        self.remember((token,))
        return token


def _first_largest(logits: Any) -> int:
    """The first largest logit's token, as ``llama_sampler_init_greedy`` picks it; -1 when
    the logits hold a NaN (numpy's argmax would pick it, llama.cpp's ``>`` skips it: its
    greedy sampler decides then)."""
    token = int(np.argmax(logits))
    return -1 if np.isnan(logits[token]) else token


_views: dict[tuple[int, int], Any] = {}


def _row_view(ptr: Any, n_vocab: int) -> Any:
    """A numpy view of the ``n_vocab`` logits at ``ptr`` (a context's output buffer).

    Views are kept by address: a decode step's rows sit where the previous step's did,
    and a new view costs 50 us with the caches cold from a decode. A view holds only the
    address, and is used only for an address llama.cpp has just returned, so one kept
    after its buffer moved is as good as a new one."""
    key = (ctypes.cast(ptr, ctypes.c_void_p).value or 0, n_vocab)
    view = _views.get(key)
    if view is None:
        if len(_views) >= 256:
            _views.clear()
        view = _views[key] = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
    return view


@contextmanager
def sampler_chain(
    vocab: int,
    n_vocab: int,
    partial_utf8: Callable[[], list[int]],
    params: Sampling,
    *,
    grammar: str | None = None,
    prompt: Sequence[int] = (),
) -> Iterator[Sampler]:
    """A :class:`Sampler` for ``params``: a llama.cpp sampler chain, in the order llama.cpp's own tools use:
    logit biases, a GBNF ``grammar`` (rule ``root``; only tokens it allows survive),
    penalties, then greedy or top-k / top-p / min-p / temperature / a seeded draw.

    ``params.logit_bias`` is added to the logits; -100 bans the token outright (-inf).
    ``partial_utf8`` lists the tokens that are not whole UTF-8 text (asked for only
    with a grammar). The repetition penalty counts every token of ``prompt`` (the prompt's
    token ids, an image's positions as its ``<image>`` id) and of the answer, as
    transformers and vLLM do (the cards' 1.05 is theirs); the presence and frequency
    penalties look at the whole answer (up to ``params.max_tokens``) and not the prompt,
    as OpenAI's do.
    """
    chain = llama_cpp.llama_sampler_chain_init(_chain_params())
    add = llama_cpp.llama_sampler_chain_add
    try:
        sampler = Sampler(chain, n_vocab, params, grammar=grammar is not None, prompt=prompt)
        biases = {t: (float("-inf") if b <= -100 else b) for t, b in params.logit_bias}
        if grammar is not None:
            # llama.cpp's grammar does not check UTF-8 continuation bytes, so byte-level
            # tokens could spell invalid UTF-8 (and control characters) inside a JSON
            # string; tokens that are not whole UTF-8 text are banned while it runs.
            biases.update(dict.fromkeys(partial_utf8(), float("-inf")))
        if biases:
            arr = (llama_cpp.llama_logit_bias * len(biases))(
                *(llama_cpp.llama_logit_bias(t, b) for t, b in biases.items())
            )
            add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), arr))
        if grammar is not None:
            constraint = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not constraint:
                raise GenerationError("llama.cpp rejected the grammar (run with --verbose for its reason)")
            add(chain, constraint)
        if params.repetition_penalty != 1.0 and sampler.penalty is None:
            # llama.cpp's, over a window holding the whole prompt and answer
            window = len(prompt) + max(1, params.max_tokens)
            penalty = llama_cpp.llama_sampler_init_penalties(n_vocab, window, params.repetition_penalty, 0.0, 0.0)
            for t in prompt:
                llama_cpp.llama_sampler_accept(penalty, t)
            add(chain, penalty)
        if params.frequency_penalty or params.presence_penalty:
            window = max(1, params.max_tokens)
            penalties = llama_cpp.llama_sampler_init_penalties(
                n_vocab, window, 1.0, params.frequency_penalty, params.presence_penalty
            )
            add(chain, penalties)
        if params.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0:
                add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = 0xFFFFFFFF if params.seed is None else params.seed & 0xFFFFFFFF
            add(chain, llama_cpp.llama_sampler_init_dist(seed))
        yield sampler
    finally:
        llama_cpp.llama_sampler_free(chain)


def _chain_params() -> Any:
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    return params


def sample_logits(chain: int, logits: Any, n_vocab: int) -> int:
    """Sample from saved logits (a ctypes or numpy float32 array) and accept the token,
    as ``llama_sampler_sample`` does from a context's."""
    n = n_vocab
    data = (llama_cpp.llama_token_data * n)()
    view = np.frombuffer(memoryview(data), dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
    view["id"] = np.arange(n, dtype=np.int32)
    view["logit"] = np.frombuffer(memoryview(logits), dtype=np.float32, count=n)
    cur = llama_cpp.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(cur))
    if not 0 <= cur.selected < cur.size:
        raise GenerationError("the sampler selected no token")
    token = int(data[cur.selected].id)
    llama_cpp.llama_sampler_accept(chain, token)
    return token


def token_logprobs(logits: Any, n_vocab: int, token: int, n_top: int) -> tuple[float, list[tuple[int, float]]]:
    """``token``'s log-probability under ``logits`` (a ``float*`` or a ctypes array of
    ``n_vocab`` raw logits: the model's own distribution, before any bias, penalty,
    grammar or temperature), and the ``n_top`` likeliest tokens with theirs, best first."""
    ptr = ctypes.cast(logits, ctypes.POINTER(ctypes.c_float))
    x = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64)
    top = x.max()
    log_z = top + np.log(np.exp(x - top).sum())
    chosen = float(x[token] - log_z)
    if n_top <= 0:
        return chosen, []
    k = min(n_top, n_vocab)
    ids = np.argpartition(-x, k - 1)[:k] if k < n_vocab else np.arange(n_vocab)
    ids = ids[np.lexsort((ids, -x[ids]))]  # best first; ties by id
    return chosen, [(int(i), float(x[i] - log_z)) for i in ids]
