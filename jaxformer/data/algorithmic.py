"""The algorithmic tasks on which the length-generalization literature compares positional encodings.

Registered in the synthetic task registry (`data.name=synthetic/<task>`), with the same row format: the prompt, `|`
or `=`, the answer; the loss and exact match cover the answer tokens only. Each task has a size n (items in the
prompt); train on n = 1..N (`data.synthetic.min_items=1`, `max_items=N`) and evaluate at every n = N+1..M
(`jaxformer eval --sizes`, a sweep's `eval_sizes`), as the papers do.

From Delétang et al. 2023 ("Neural networks and the Chomsky hierarchy") as Ruoss et al. 2023 ("Randomized positional
encodings boost length generalization of transformers") use them, decoder-only here (prompt, then answer):

    reverse_string            b_1..b_n | b_n..b_1              binary string, 2n+1 tokens
    duplicate_string          b_1..b_n | b_1..b_n b_1..b_n     3n+1 tokens
    parity_check              b_1..b_n | p                     p = number of 1s mod 2, n+2 tokens
    binary_addition           x+y | z                          x, y little-endian binary of a and n-a bits (n >= 2),
                                                               z = x + y little-endian, max(a, n-a)+1 bits
                                                               (at most 2n+2 tokens)
    bucket_sort               s_1..s_n | sorted(s)             symbols from an alphabet of 5 (a-e), 2n+1 tokens
    missing_duplicate_string  b b' | m                         b' = b with one bit replaced by `?`, m that bit
    modular_arithmetic        e | r                            e = n terms in 0..4 joined by + - *, r = e mod 5
                                                               (usual precedence), 2n+1 tokens

From Kazemnejad et al. 2023 ("The impact of positional encoding on length generalization in transformers"), their
decoder-only formats without the scratchpad ("Compute: ... ? The answer is ..."), one character per token; their
BOS token is `data.bos`, added to any task by the batching:

    addition                  x+y=z                            x, y of n decimal digits, z = x + y as n+1 digits
                                                               (a leading 0 where it has n), 3n+3 tokens
    summation                 d_1+..+d_n=r                     r = (d_1 + .. + d_n) mod 10
    sorting                   d_1..d_n | sorted(d)             decimal digits, 2n+1 tokens

The vocabulary is the synthetic tasks' (`_ | 0-9 a..`) followed by `+ - * = ?`, so their token ids are unchanged.
Every generator draws i.i.d. uniform symbols at every n, so a longer example differs from a shorter one only in n.
"""

from __future__ import annotations

import numpy as np

import jaxformer.data.synthetic as synthetic
from jaxformer.data.synthetic import DIGIT0, SEP, SYMBOL0, Task

OPERATORS = "+-*=?"
# What `sample --prompt` says for these tasks: it checks typed prompts of the synthetic tasks' own forms only.
FORM = "a random example of it (sample without --prompt)"


def vocabulary(num_symbols: int) -> list:
    return [*synthetic.vocabulary(num_symbols), *OPERATORS]


def _ids(num_symbols: int) -> dict:
    """Token ids of the operators for `num_symbols` symbols (they follow the symbols)."""
    return {c: SYMBOL0 + num_symbols + i for i, c in enumerate(OPERATORS)}


def _bits(g: np.random.Generator, n: int) -> np.ndarray:
    return g.integers(0, 2, n)


def _digits(values) -> list:
    return [DIGIT0 + int(v) for v in values]


def _reverse_string(g, n, k):
    b = _bits(g, n)
    return [*_digits(b), SEP], _digits(b[::-1])


def _duplicate_string(g, n, k):
    b = _bits(g, n)
    return [*_digits(b), SEP], _digits(np.concatenate([b, b]))


def _parity_check(g, n, k):
    b = _bits(g, n)
    return [*_digits(b), SEP], _digits([b.sum() % 2])


def _little_endian(value: int, width: int) -> list:
    return [(value >> i) & 1 for i in range(width)]


def _binary_addition(g, n, k):
    ops = _ids(k)
    a = int(g.integers(1, n))  # bits of x; y has the other n - a
    x, y = int(g.integers(0, 2 ** a)), int(g.integers(0, 2 ** (n - a)))
    prompt = [*_digits(_little_endian(x, a)), ops["+"], *_digits(_little_endian(y, n - a)), SEP]
    return prompt, _digits(_little_endian(x + y, max(a, n - a) + 1))


def _bucket_sort(g, n, k):
    s = SYMBOL0 + g.integers(0, min(5, k), n)
    return [*s, SEP], list(np.sort(s))


def _missing_duplicate_string(g, n, k):
    b = _bits(g, n)
    doubled = _digits(np.concatenate([b, b]))
    i = int(g.integers(0, 2 * n))
    missing = doubled[i]
    doubled[i] = _ids(k)["?"]
    return [*doubled, SEP], [missing]


def _modular_arithmetic(g, n, k):
    ops = _ids(k)
    terms = g.integers(0, 5, n)
    operators = g.choice(list("+-*"), n - 1)
    text = "".join(f"{o}{t}" for o, t in zip(["", *operators], terms, strict=True))
    prompt = []
    for c in text:
        prompt.append(DIGIT0 + int(c) if c.isdigit() else ops[c])
    # Python's precedence is the usual one (* before + and -), and its % is non-negative for a positive modulus.
    return [*prompt, SEP], _digits([eval(text) % 5])  # noqa: S307 -- digits and + - * only, made above


def _addition(g, n, k):
    ops = _ids(k)
    x, y = g.integers(0, 10, n), g.integers(0, 10, n)
    value = int("".join(map(str, x))) + int("".join(map(str, y)))
    return [*_digits(x), ops["+"], *_digits(y), ops["="]], _digits(str(value).zfill(n + 1))


def _summation(g, n, k):
    ops = _ids(k)
    d = g.integers(0, 10, n)
    prompt = [t for i, v in enumerate(d) for t in ([ops["+"]] if i else []) + [DIGIT0 + int(v)]]
    return [*prompt, ops["="]], _digits([d.sum() % 10])


def _sorting(g, n, k):
    d = g.integers(0, 10, n)
    return [*_digits(d), SEP], _digits(np.sort(d))


TASKS = (
    Task("reverse_string", _reverse_string, lambda n: 2 * n + 1, 1, form=FORM, vocabulary=vocabulary),
    Task("duplicate_string", _duplicate_string, lambda n: 3 * n + 1, 1, form=FORM, vocabulary=vocabulary),
    Task("parity_check", _parity_check, lambda n: n + 2, 1, form=FORM, vocabulary=vocabulary),
    Task("binary_addition", _binary_addition, lambda n: 2 * n + 2, 2, form=FORM, vocabulary=vocabulary),
    Task("bucket_sort", _bucket_sort, lambda n: 2 * n + 1, 1, form=FORM, vocabulary=vocabulary),
    Task("missing_duplicate_string", _missing_duplicate_string, lambda n: 2 * n + 2, 1, form=FORM,
         vocabulary=vocabulary),
    Task("modular_arithmetic", _modular_arithmetic, lambda n: 2 * n + 1, 1, form=FORM, vocabulary=vocabulary),
    Task("addition", _addition, lambda n: 3 * n + 3, 1, form=FORM, vocabulary=vocabulary),
    Task("summation", _summation, lambda n: 2 * n + 1, 1, form=FORM, vocabulary=vocabulary),
    Task("sorting", _sorting, lambda n: 2 * n + 1, 1, form=FORM, vocabulary=vocabulary),
)

for _task in TASKS:  # registered beside the synthetic tasks: data.name=synthetic/<name>, one vocabulary each
    if _task.name in synthetic.TASKS:
        raise ValueError(f"synthetic task {_task.name!r} is already registered")
    synthetic.TASKS[_task.name] = _task
