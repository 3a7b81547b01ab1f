"""llama.cpp sampler chains, sampling from saved logits, and log-probabilities."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import llama_cpp

from lfm2_edge.errors import GenerationError
from lfm2_edge.sampling import Sampling

__all__ = ["sample_logits", "sampler_chain", "token_logprobs"]


@contextmanager
def sampler_chain(
    vocab: int,
    n_vocab: int,
    partial_utf8: Callable[[], list[int]],
    params: Sampling,
    *,
    penalty_last_n: int = 64,
    grammar: str | None = None,
) -> Iterator[int]:
    """A llama.cpp sampler chain for ``params``, in the order llama.cpp's own tools use:
    logit biases, a GBNF ``grammar`` (rule ``root``; only tokens it allows survive),
    penalties, then greedy or top-k / top-p / min-p / temperature / a seeded draw.

    ``params.logit_bias`` is added to the logits; -100 bans the token outright (-inf).
    ``partial_utf8`` lists the tokens that are not whole UTF-8 text (asked for only
    with a grammar). The repetition penalty looks at the last ``penalty_last_n`` tokens
    sampled, the presence and frequency penalties at the whole answer (up to
    ``params.max_tokens``), as OpenAI's do; neither looks at the prompt.
    """
    chain = llama_cpp.llama_sampler_chain_init(_chain_params())
    add = llama_cpp.llama_sampler_chain_add
    try:
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
        if params.repetition_penalty != 1.0:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(n_vocab, penalty_last_n, params.repetition_penalty, 0.0, 0.0),
            )
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
        yield chain
    finally:
        llama_cpp.llama_sampler_free(chain)


def _chain_params() -> Any:
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    return params


def sample_logits(chain: int, logits: ctypes.Array[ctypes.c_float], n_vocab: int) -> int:
    """Sample from saved logits and accept the token, as ``llama_sampler_sample`` does
    from a context's."""
    import numpy as np

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
    import numpy as np

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
