"""``linear_logprobs`` in bounded-memory PyTorch: the CPU path (any device).

Forward (per token chunk, loop over vocab slices; only one [token_chunk, vocab_chunk] logit tile lives
at a time):
    z   = hidden_c @ weight_s.T (+ bias_s), summed in fp32 from the input values (no bf16 rounding)
    m   = running max over the slices seen so far, s = sum exp(z - m) rescaled as m grows
    lse = m + log(s);  logp = z[t] - lse
    extras (no grad): a = sum exp(z - m) * (z - m), rescaled online as m grows: a' = r * (a + (m - m') * s)
    j   = first column of the first tile whose maximum exceeds the running max (``argmax``'s tie rule)
    entropy = log(s) - a / s  (no cancellation of two large numbers), target_is_argmax = (j == t)

Autocast is off inside (``linear_logprobs`` turns it off around every backend): the tiles are formed
in the accumulation dtype whatever autocast context the caller is in.

Backward: ``backward.accumulate_gradients`` (the driver both fused backends share) over the same
chunks as the forward (``chunk_sizes``), with the tile function ``torch_dlogits``, which recomputes a [token_chunk, vocab_chunk] logit tile and returns
    dz = g * (onehot(t) - exp(z - lse))   formed in fp32 (float64 for float64 inputs), returned in the input dtype
"""
import torch

from .backward import accumulation_dtype

# A logit tile holds at most this many elements (4 MiB in fp32) on the chunked path.
TILE_ELEMENTS = 1<<20
TOKEN_CHUNK = 512
# Initial running max: finite, so the first rescale is exp(-huge) = 0 and 0 * (m - m') stays 0.
NO_LOGIT_YET = -1e30


def chunk_sizes(num_tokens, vocab_size):
    """(token_chunk, vocab_chunk) so that one [token_chunk, vocab_chunk] tile fits ``TILE_ELEMENTS``."""
    token_chunk = max(1, min(num_tokens, TOKEN_CHUNK))
    vocab_chunk = max(1, min(vocab_size, TILE_ELEMENTS // token_chunk))
    return token_chunk, vocab_chunk


def logit_tile(hidden, weight, bias, v0, v1):
    """Logits of ``hidden`` against vocab rows [v0, v1) in the accumulation dtype, as the Triton
    kernels form them: products of the input values summed in fp32 (float64 for float64 inputs),
    never rounded to bf16/fp16. The operands are upcast for the matmul (a CPU matmul has no
    mixed-precision output)."""
    dtype = accumulation_dtype(hidden.dtype)
    z = hidden.to(dtype) @ weight[v0:v1].to(dtype).T
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
        first_argmax = torch.zeros(n1 - n0, dtype=torch.long, device=hidden.device)
        for v0 in range(0, vocab_size, vocab_chunk):
            v1 = min(vocab_size, v0 + vocab_chunk)
            z = logit_tile(h, weight, bias, v0, v1)
            tile_max = z.amax(dim=1)
            new_max = torch.maximum(running_max, tile_max)
            rescale = torch.exp(running_max - new_max)
            p = z.sub(new_max[:, None]).exp_()
            sum_exp_prev, sum_exp = sum_exp, sum_exp * rescale + p.sum(dim=1)
            if with_stats:  # sum exp(z - m) * (z - m), kept relative to the running max for precision
                sum_exp_z = (sum_exp_z + (running_max - new_max) * sum_exp_prev) * rescale + (p * (z - new_max[:, None])).sum(dim=1)
                first_argmax = torch.where(tile_max > running_max, z.argmax(dim=1) + v0, first_argmax)
            in_slice = (t >= v0) & (t < v1)
            local = (t - v0).clamp(0, v1 - v0 - 1)
            target_logit += z.gather(1, local[:, None]).squeeze(1) * in_slice
            running_max = new_max
            del z, p  # free this tile before the next one is formed
        lse[n0:n1] = running_max + torch.log(sum_exp)
        logp[n0:n1] = target_logit - lse[n0:n1]
        if with_stats:
            entropy[n0:n1] = torch.log(sum_exp) - sum_exp_z / sum_exp
            target_is_argmax[n0:n1] = first_argmax == t
    return logp, lse, entropy, target_is_argmax


def torch_dlogits(hidden, weight, bias, targets, lse, grad, v0, v1):
    """``dz = g * (onehot(t) - exp(z - lse))`` for vocab rows [v0, v1), in the input dtype."""
    z = logit_tile(hidden, weight, bias, v0, v1)
    dz = z.sub_(lse[:, None]).exp_().mul_(-grad[:, None])
    in_slice = (targets >= v0) & (targets < v1)
    local = (targets - v0).clamp(0, v1 - v0 - 1)
    dz.scatter_add_(1, local[:, None], (grad * in_slice)[:, None])
    return dz.to(hidden.dtype)
