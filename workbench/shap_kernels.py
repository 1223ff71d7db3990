"""Two of shap's numba kernels, rewritten so that numba can keep their compiled code on disk.

shap compiles its partition-explainer kernels with numba on first use and asks numba to cache
none of them. :mod:`workbench.warmup` turns caching on for three; these two cannot be cached as
shap writes them:

* ``shap.utils._masked_model._build_fixed_multi_output`` takes the link function, a jitted
  function, as an argument: numba types it by that function object, which differs in every
  process, so a cached copy never matches (and each start adds an entry);
* ``shap.explainers._partition.lower_credit`` is recursive over two signatures, and loading it
  back from the cache crashed the process (numba 0.68).

Here the first is specialised to shap's identity link (the only one the workbench uses) and the
second walks the tree with an explicit stack. Each does the same floating-point operations in
the same order as shap's, so the results are bit-identical (``tests/test_shap_kernels.py``);
other arguments (another link, linearizing weights, other arrays) go to shap's own code.
Compiling the two took 2.5 s of a worker's 3.7 s shap warm-up on this 2-core machine.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _multi_output_identity(averaged_outs, last_outs, outputs, batch_positions, varying_rows, num_varying_rows):
    sample_count = last_outs.shape[0]
    for i in range(len(averaged_outs)):
        if batch_positions[i] < batch_positions[i + 1]:
            if num_varying_rows[i] == sample_count:
                last_outs[:] = outputs[batch_positions[i] : batch_positions[i + 1]]
            else:
                last_outs[varying_rows[i]] = outputs[batch_positions[i] : batch_positions[i + 1]]
            for j in range(last_outs.shape[-1]):
                averaged_outs[i, j] = np.mean(last_outs[:, j])
        else:
            averaged_outs[i] = averaged_outs[i - 1]


@njit(cache=True)
def _lower_credit_2d(i, value, M, values, clustering):
    # shap's recursion, depth first and left before right, with the stack made explicit: every node
    # gets its parent's final value, so the order of the additions is the recursion's
    capacity = 2 * clustering.shape[0] + 2
    nodes = np.empty(capacity, np.int64)
    carried = np.empty((capacity, values.shape[1]), values.dtype)
    nodes[0] = i
    carried[0, :] = value
    top = 1
    while top > 0:
        top -= 1
        node = nodes[top]
        values[node] += carried[top]
        if node < M:
            continue
        li = int(clustering[node - M, 0])
        ri = int(clustering[node - M, 1])
        group_size = int(clustering[node - M, 3])
        lsize = int(clustering[li - M, 3]) if li >= M else 1
        rsize = int(clustering[ri - M, 3]) if ri >= M else 1
        assert lsize + rsize == group_size
        nodes[top] = ri
        carried[top] = values[node] * rsize / group_size
        top += 1
        nodes[top] = li
        carried[top] = values[node] * lsize / group_size
        top += 1


def install() -> bool:
    """Route shap's two calls to these kernels (idempotent) -> whether they are installed."""
    import shap.explainers._partition as partition
    import shap.links
    import shap.utils._masked_model as masked_model

    if getattr(masked_model._build_fixed_multi_output, "_workbench", False):
        return True
    shaps_multi_output = masked_model._build_fixed_multi_output
    shaps_lower_credit = partition.lower_credit
    identity = shap.links.identity

    def build_fixed_multi_output(
        averaged_outs, last_outs, outputs, batch_positions, varying_rows, num_varying_rows, link, linearizing_weights
    ):
        if link is identity and linearizing_weights is None:
            return _multi_output_identity(averaged_outs, last_outs, outputs, batch_positions, varying_rows, num_varying_rows)
        return shaps_multi_output(
            averaged_outs, last_outs, outputs, batch_positions, varying_rows, num_varying_rows, link, linearizing_weights
        )

    def lower_credit(i, value, M, values, clustering):
        if isinstance(values, np.ndarray) and values.dtype == np.float64 and values.flags.c_contiguous:
            if values.ndim == 2:
                return _lower_credit_2d(i, value, M, values, clustering)
            if values.ndim == 1 and np.ndim(value) == 0:  # one output: the same additions on a [n, 1] view
                return _lower_credit_2d(i, value, M, values.reshape(-1, 1), clustering)
        # shap's compiled recursion calls the module's ``lower_credit`` (this function now), which numba
        # cannot type: its Python source recurses through here instead
        return shaps_lower_credit.py_func(i, value, M, values, clustering)

    build_fixed_multi_output._workbench = lower_credit._workbench = True
    build_fixed_multi_output.shaps = shaps_multi_output
    lower_credit.shaps = shaps_lower_credit
    masked_model._build_fixed_multi_output = build_fixed_multi_output
    partition.lower_credit = lower_credit
    return True
