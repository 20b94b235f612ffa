"""The backward of the fused backends: gradients of ``sum(grad * logp)`` from recomputed logit tiles.

Both fused backends (``chunked`` and ``triton``) differ only in how a tile of ``dz`` is produced;
this driver owns the loop order and the accumulation (docs/design.md section 3):

    for each vocab slice [v0, v1):                      outer: one slice of dweight finished at a time
        for each token chunk [n0, n1):                  inner
            dz = g * (onehot(t) - exp(z - lse))         the [chunk, slice] tile, in the input dtype
            dhidden[n0:n1]    += dz @ weight[v0:v1]     accumulated in fp32 inside the matmul
            dweight_slice     += dz.T @ hidden[n0:n1]   accumulated in fp32 inside the matmul
            dbias_slice       += dz.sum(0)              fp32
        dweight[v0:v1] = dweight_slice                  written once, in the input dtype

The vocab-outer order is what bounds memory: a slice of the weight gradient is finished before the
next starts, so no [V, H] fp32 buffer and no per-chunk copy of the weight gradient ever exists. The
workspace is the fp32 dhidden [N, H], one fp32 dweight slice and one dz tile.

"Accumulated inside the matmul" means the low-precision product is never rounded to bf16/fp16 before
it is added: the accumulator (fp32, or float64 for float64 inputs) is the matmul's output. Nothing
here synchronises with the host: loop bounds come from shapes only.
"""
import torch


def accumulation_dtype(dtype):
    """fp32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def add_matmul_(accumulator, a, b):
    """``accumulator += a @ b`` with the products summed in the accumulator's dtype.

    Same dtypes: one in-place ``addmm_``. bf16/fp16 operands on CUDA: ``addmm`` with
    ``out_dtype=accumulator.dtype`` writing into the accumulator (tensor cores, fp32 accumulation,
    no rounded intermediate); where this torch's ``addmm`` insists on an addend in the input dtype,
    a ``mm`` with ``out_dtype`` then an add (the same values, one fp32 temporary more). Elsewhere the
    operands are upcast (CPU matmuls have no mixed-precision output).
    """
    if a.dtype == accumulator.dtype:
        accumulator.addmm_(a, b)
    elif accumulator.is_cuda:
        try:
            torch.addmm(accumulator, a, b, out_dtype=accumulator.dtype, out=accumulator)
        except RuntimeError:
            accumulator += torch.mm(a, b, out_dtype=accumulator.dtype)
    else:
        accumulator.addmm_(a.to(accumulator.dtype), b.to(accumulator.dtype))


def accumulate_gradients(hidden, weight, bias, targets, lse, grad, needs, dlogits, token_chunk, vocab_chunk):
    """Gradients (dhidden, dweight, dbias) of ``sum(grad * logp)``; None for any not in ``needs``.

    ``needs`` is a triple of booleans for (hidden, weight, bias). ``dlogits(h_c, W, b, t_c, lse_c,
    g_c, v0, v1)`` returns the [chunk, v1 - v0] tile of dz in the input dtype. The loop order and
    the accumulation are described in the module docstring.
    """
    need_hidden, need_weight, need_bias = needs
    num_tokens, hidden_size = hidden.shape
    vocab_size = weight.shape[0]
    accumulator_dtype = accumulation_dtype(hidden.dtype)
    dhidden = torch.zeros(num_tokens, hidden_size, dtype=accumulator_dtype, device=hidden.device) if need_hidden else None
    dweight = torch.empty_like(weight) if need_weight else None
    dbias = torch.empty_like(bias) if need_bias else None
    for v0 in range(0, vocab_size, vocab_chunk):
        v1 = min(vocab_size, v0 + vocab_chunk)
        weight_slice = weight[v0:v1]
        dweight_slice = torch.zeros(v1 - v0, hidden_size, dtype=accumulator_dtype, device=weight.device) if need_weight else None
        dbias_slice = torch.zeros(v1 - v0, dtype=accumulator_dtype, device=weight.device) if need_bias else None
        for n0 in range(0, num_tokens, token_chunk):
            n1 = min(num_tokens, n0 + token_chunk)
            h = hidden[n0:n1]
            dz = dlogits(h, weight, bias, targets[n0:n1], lse[n0:n1], grad[n0:n1], v0, v1)
            if need_hidden:
                add_matmul_(dhidden[n0:n1], dz, weight_slice)
            if need_weight:
                add_matmul_(dweight_slice, dz.T, h)
            if need_bias:
                dbias_slice += dz.sum(dim=0, dtype=accumulator_dtype)
        if need_weight:
            dweight[v0:v1] = dweight_slice
        if need_bias:
            dbias[v0:v1] = dbias_slice
    if need_hidden:
        dhidden = dhidden.to(hidden.dtype)
    return dhidden, dweight, dbias
