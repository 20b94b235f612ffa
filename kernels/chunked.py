"""``linear_logprobs`` in bounded-memory PyTorch: the CPU path, and the backward driver of every backend.

Forward (per token chunk, loop over vocab slices; only one [token_chunk, vocab_chunk] logit tile lives
at a time):
    z   = hidden_c @ weight_s.T (+ bias_s), upcast to fp32
    m   = running max over the slices seen so far, s = sum exp(z - m) rescaled as m grows
    lse = m + log(s);  logp = z[t] - lse
    extras (no grad): a = sum exp(z - m) * (z - m), rescaled online as m grows: a' = r * (a + (m - m') * s)
    entropy = log(s) - a / s  (no cancellation of two large numbers), target_is_argmax = z[t] >= m

Backward (``accumulate_gradients``; outer loop over vocab slices, inner over token chunks):
    dz  = g * (onehot(t) - exp(z - lse))                 recomputed per tile, never stored whole
    dhidden[chunk] += dz @ weight_s                       accumulated in fp32 (float64 for float64 inputs)
    dweight[slice]  = sum over chunks of dz.T @ hidden_c  accumulated in fp32, written once per slice
    dbias[slice]    = sum over chunks of dz.sum(0)
The vocab-outer order is what bounds memory: a slice of the weight gradient is finished before the
next starts, so no [V, H] fp32 buffer and no per-chunk copy of the weight gradient ever exists. The
only O(N*H) workspace is the fp32 accumulator of dhidden. The tile function that produces ``dz`` is a
parameter, so the Triton backend reuses this driver with its fused logit-recompute kernel.
"""
import torch

# A logit tile holds at most this many elements (8 MiB in fp32) on the chunked path.
TILE_ELEMENTS = 1<<20
TOKEN_CHUNK = 512
# Initial running max: finite, so the first rescale is exp(-huge) = 0 and 0 * (m - m') stays 0.
NO_LOGIT_YET = -1e30


def chunk_sizes(num_tokens, vocab_size):
    """(token_chunk, vocab_chunk) so that one [token_chunk, vocab_chunk] tile fits ``TILE_ELEMENTS``."""
    token_chunk = max(1, min(num_tokens, TOKEN_CHUNK))
    vocab_chunk = max(1, min(vocab_size, TILE_ELEMENTS // token_chunk))
    return token_chunk, vocab_chunk


def accumulation_dtype(dtype):
    """fp32, or float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def logit_tile(hidden, weight, bias, v0, v1):
    """Logits of ``hidden`` against vocab rows [v0, v1) in the accumulation dtype; the matmul runs in
    the input dtype."""
    z = (hidden @ weight[v0:v1].T).to(accumulation_dtype(hidden.dtype))
    if bias is not None:
        z += bias[v0:v1]
    return z


def chunked_forward(hidden, weight, bias, targets, with_stats):
    """Returns (logp, lse, entropy, target_is_argmax) for non-ignored tokens; extras None unless asked."""
    num_tokens, vocab_size = hidden.shape[0], weight.shape[0]
    token_chunk, vocab_chunk = chunk_sizes(num_tokens, vocab_size)
    logp = torch.empty(num_tokens, dtype=accumulation_dtype(hidden.dtype), device=hidden.device)
    lse = torch.empty_like(logp)
    entropy = torch.empty_like(logp) if with_stats else None
    target_is_argmax = torch.empty(num_tokens, dtype=torch.bool, device=hidden.device) if with_stats else None
    for n0 in range(0, num_tokens, token_chunk):
        n1 = min(num_tokens, n0 + token_chunk)
        h, t = hidden[n0:n1], targets[n0:n1]
        running_max = torch.full((n1 - n0,), NO_LOGIT_YET, dtype=logp.dtype, device=hidden.device)
        sum_exp = torch.zeros_like(running_max)
        sum_exp_z = torch.zeros_like(running_max)
        target_logit = torch.zeros_like(running_max)
        for v0 in range(0, vocab_size, vocab_chunk):
            v1 = min(vocab_size, v0 + vocab_chunk)
            z = logit_tile(h, weight, bias, v0, v1)
            new_max = torch.maximum(running_max, z.amax(dim=1))
            rescale = torch.exp(running_max - new_max)
            p = z.sub(new_max[:, None]).exp_()
            sum_exp_prev, sum_exp = sum_exp, sum_exp * rescale + p.sum(dim=1)
            if with_stats:  # sum exp(z - m) * (z - m), kept relative to the running max for precision
                sum_exp_z = (sum_exp_z + (running_max - new_max) * sum_exp_prev) * rescale + (p * (z - new_max[:, None])).sum(dim=1)
            in_slice = (t >= v0) & (t < v1)
            local = (t - v0).clamp(0, v1 - v0 - 1)
            target_logit += z.gather(1, local[:, None]).squeeze(1) * in_slice
            running_max = new_max
            del z, p  # free this tile before the next one is formed
        lse[n0:n1] = running_max + torch.log(sum_exp)
        logp[n0:n1] = target_logit - lse[n0:n1]
        if with_stats:
            entropy[n0:n1] = torch.log(sum_exp) - sum_exp_z / sum_exp
            target_is_argmax[n0:n1] = target_logit >= running_max
    return logp, lse, entropy, target_is_argmax


def torch_dlogits(hidden, weight, bias, targets, lse, grad, v0, v1):
    """``dz = g * (onehot(t) - exp(z - lse))`` for vocab rows [v0, v1), in the input dtype."""
    z = logit_tile(hidden, weight, bias, v0, v1)
    dz = z.sub_(lse[:, None]).exp_().mul_(-grad[:, None])
    in_slice = (targets >= v0) & (targets < v1)
    local = (targets - v0).clamp(0, v1 - v0 - 1)
    dz.scatter_add_(1, local[:, None], (grad * in_slice)[:, None])
    return dz.to(hidden.dtype)


def accumulate_gradients(hidden, weight, bias, targets, lse, grad, needs, dlogits, token_chunk, vocab_chunk):
    """Gradients (dhidden, dweight, dbias) of ``sum(grad * logp)``; None for any not in ``needs``.

    ``needs`` is a triple of booleans for (hidden, weight, bias). ``dlogits(h_c, W, b, t_c, lse_c,
    g_c, v0, v1)`` returns the [chunk, v1 - v0] tile of dz. See the module docstring for the order.
    """
    need_hidden, need_weight, need_bias = needs
    num_tokens, hidden_size = hidden.shape
    vocab_size = weight.shape[0]
    dhidden_dtype = accumulation_dtype(hidden.dtype)
    dhidden = torch.zeros(num_tokens, hidden_size, dtype=accumulation_dtype(hidden.dtype), device=hidden.device) if need_hidden else None
    dweight = torch.empty_like(weight) if need_weight else None
    dbias = torch.empty_like(bias) if need_bias else None
    for v0 in range(0, vocab_size, vocab_chunk):
        v1 = min(vocab_size, v0 + vocab_chunk)
        weight_slice = weight[v0:v1]
        dweight_slice = torch.zeros(v1 - v0, hidden_size, dtype=dhidden_dtype, device=weight.device) if need_weight else None
        dbias_slice = torch.zeros(v1 - v0, dtype=dhidden_dtype, device=weight.device) if need_bias else None
        for n0 in range(0, num_tokens, token_chunk):
            n1 = min(num_tokens, n0 + token_chunk)
            h = hidden[n0:n1]
            dz = dlogits(h, weight, bias, targets[n0:n1], lse[n0:n1], grad[n0:n1], v0, v1)
            if need_hidden:
                dhidden[n0:n1] += dz @ weight_slice
            if need_weight:
                dweight_slice += dz.T @ h
            if need_bias:
                dbias_slice += dz.sum(dim=0, dtype=dhidden_dtype)
        if need_weight:
            dweight[v0:v1] = dweight_slice
        if need_bias:
            dbias[v0:v1] = dbias_slice
    if need_hidden:
        dhidden = dhidden.to(hidden.dtype)
    return dhidden, dweight, dbias


def chunked_backward(hidden, weight, bias, targets, lse, grad, needs):
    token_chunk, vocab_chunk = chunk_sizes(hidden.shape[0], weight.shape[0])
    return accumulate_gradients(hidden, weight, bias, targets, lse, grad, needs, torch_dlogits, token_chunk, vocab_chunk)
