"""llama.cpp sampler chains, and sampling from saved logits."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import llama_cpp

from lfm2_edge.errors import GenerationError

__all__ = ["sample_logits", "sampler_chain"]


@contextmanager
def sampler_chain(
    vocab: int,
    n_vocab: int,
    partial_utf8_tokens: Callable[[], list[int]],
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    repetition_penalty: float,
    seed: int | None,
    penalty_last_n: int = 64,
    grammar: str | None = None,
) -> Iterator[int]:
    """A llama.cpp sampler chain in the order llama.cpp's own tools use; a GBNF
    ``grammar`` (rule ``root``) comes first, so only tokens it allows survive.
    ``partial_utf8_tokens`` lists the tokens that are not whole UTF-8 text (asked for
    only with a grammar)."""
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(params)
    add = llama_cpp.llama_sampler_chain_add
    try:
        if grammar is not None:
            # llama.cpp's grammar does not check UTF-8 continuation bytes, so byte-level
            # tokens could spell invalid UTF-8 (and control characters) inside a JSON
            # string; tokens that are not whole UTF-8 text are banned while it runs.
            banned = partial_utf8_tokens()
            biases = (llama_cpp.llama_logit_bias * len(banned))(
                *(llama_cpp.llama_logit_bias(t, float("-inf")) for t in banned)
            )
            add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(banned), biases))
            constraint = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not constraint:
                raise GenerationError("llama.cpp rejected the grammar (run with --verbose for its reason)")
            add(chain, constraint)
        if repetition_penalty != 1.0:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(n_vocab, penalty_last_n, repetition_penalty, 0.0, 0.0),
            )
        if temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            if top_k > 0:
                add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
            if top_p < 1.0:
                add(chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
            if min_p > 0:
                add(chain, llama_cpp.llama_sampler_init_min_p(min_p, 1))
            add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            add(chain, llama_cpp.llama_sampler_init_dist(0xFFFFFFFF if seed is None else seed & 0xFFFFFFFF))
        yield chain
    finally:
        llama_cpp.llama_sampler_free(chain)


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
