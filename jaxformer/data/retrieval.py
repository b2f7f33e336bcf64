"""Tasks where context pays: the answer is a copy of tokens a chosen distance back, so a model that does not use
that much context must fail (the sliding-window row of the reports, extrapolation.evaluate_retrieval).

Registered in the synthetic task registry (`data.name=synthetic/<task>`), in the synthetic tasks' row format. Each
example has a `depth` in [0, 1]: where the information sits. Training draws it uniformly; evaluation sets it
(`SyntheticDataset.probe`, a sweep's `eval_depths`), so accuracy is reported by (total length, depth).

    passkey   f..f = d_1..d_D = f..f ? d_1..d_D
              Mohtashami & Jaggi 2023 ("Landmark attention"), the test of Chen et al. 2023 and Peng et al. 2023:
              a random D-digit key (data.synthetic.key_digits, 5) hidden in filler, asked for at the end. The
              filler is the same text repeated (theirs: "The grass is green. The sky is blue. ..."; here the
              symbols a, b, ... cycled), the key is introduced by `=` ("The pass key is 71432. Remember it") and
              asked for by `?` ("What is the pass key?"). Size n = filler tokens; depth = the fraction of the
              filler before the key (0: the key first, 1: right before the question). n + 2D + 3 tokens.
    mqar      far pairs . . . . near pairs | q_1 v_1 q_2 v_2 .. q_P v_P
              Multi-query associative recall (Arora et al. 2023, Zoology's MQAR): P (data.synthetic.pairs, 8)
              key-value pairs with distinct keys (symbols) and values (digits), then every key asked once in random
              order, each followed by its value (the predicted tokens; the queries are given). Size n = filler
              tokens `.` between the pairs; depth = the fraction of the pairs placed before the filler, so at a
              length with n > the training length, that fraction of the queries needs a value from beyond the
              training length (and the rest within it). 4P + 1 + n tokens.

Both report, per predicted token, the distance back to the token it copies (`sources`), so the evaluation can split
accuracy into answers within and beyond the training length.
"""

from __future__ import annotations

import numpy as np

import jaxformer.data.synthetic as synthetic
from jaxformer.data.synthetic import DIGIT0, SEP, SYMBOL0, Task

MARKERS = "=?."  # the key's introduction, the question, the MQAR filler


def vocabulary(num_symbols: int) -> list:
    return [*synthetic.vocabulary(num_symbols), *MARKERS]


def _ids(num_symbols: int) -> dict:
    return {c: SYMBOL0 + num_symbols + i for i, c in enumerate(MARKERS)}


def _depth(g: np.random.Generator, depth: float | None) -> float:
    return float(g.random()) if depth is None else depth


def passkey(g: np.random.Generator, n: int, k: int, *, key_digits: int = 5, depth: float | None = None):
    """(prompt, answer, mask, sources): n filler tokens, the key after round(depth * n) of them."""
    ids = _ids(k)
    before = int(round(_depth(g, depth) * n))
    filler = [SYMBOL0 + i % k for i in range(n)]  # the same "sentences" repeated, as in the literature
    key = list(DIGIT0 + g.integers(0, 10, key_digits))
    prompt = [*filler[:before], ids["="], *key, ids["="], *filler[before:], ids["?"]]
    first_key = before + 1
    # answer token j sits at len(prompt) + j and copies the key digit at first_key + j
    sources = [len(prompt) - first_key] * key_digits
    return prompt, key, [1] * key_digits, sources


def _passkey_length(n: int, *, key_digits: int = 5) -> int:
    return n + 2 * key_digits + 3


def mqar(g: np.random.Generator, n: int, k: int, *, pairs: int = 8, depth: float | None = None):
    """(prompt, answer, mask, sources): round(depth * P) pairs, n filler tokens, the other pairs, `|`, the queries."""
    ids = _ids(k)
    keys = SYMBOL0 + g.permutation(k)[:pairs]  # distinct keys
    values = DIGIT0 + g.integers(0, 10, pairs)
    far = int(round(_depth(g, depth) * pairs))
    pair_tokens = np.stack([keys, values], 1).reshape(-1)
    prompt = [*pair_tokens[:2 * far], *[ids["."]] * n, *pair_tokens[2 * far:], SEP]
    value_at = {int(keys[i]): (2 * i + 1 if i < far else 2 * i + 1 + n) for i in range(pairs)}
    answer, mask, sources = [], [], []
    for i in g.permutation(pairs):
        q_pos = len(prompt) + len(answer)  # the query's position; its value follows it
        answer += [int(keys[i]), int(values[i])]
        mask += [0, 1]
        sources += [-1, q_pos + 1 - value_at[int(keys[i])]]
    return prompt, answer, mask, sources


def _mqar_length(n: int, *, pairs: int = 8) -> int:
    return 4 * pairs + 1 + n


def check_passkey(settings: dict, num_symbols: int) -> str | None:
    if not 1 <= settings["key_digits"] <= 64:
        return f"data.synthetic.key_digits={settings['key_digits']}; must be in [1, 64]"
    return None


def check_mqar(settings: dict, num_symbols: int) -> str | None:
    if settings["pairs"] < 1:
        return f"data.synthetic.pairs={settings['pairs']}; must be >= 1"
    if settings["pairs"] > num_symbols:
        return (f"data.synthetic.pairs={settings['pairs']} is more than the {num_symbols} distinct keys "
                f"(data.synthetic.num_symbols); give pairs <= num_symbols or more symbols (at most 52)")
    return None


FORM = "a random example of it (sample without --prompt)"
TASKS = (
    Task("passkey", passkey, _passkey_length, 0, form=FORM, vocabulary=vocabulary, settings=(("key_digits", 5),),
         check=check_passkey, placed=True),
    Task("mqar", mqar, _mqar_length, 0, form=FORM, vocabulary=vocabulary, settings=(("pairs", 8),), check=check_mqar,
         placed=True),
)

for _task in TASKS:  # beside the synthetic tasks: data.name=synthetic/<name>
    if _task.name in synthetic.TASKS:
        raise ValueError(f"synthetic task {_task.name!r} is already registered")
    synthetic.TASKS[_task.name] = _task
