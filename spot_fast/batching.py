"""Micro-batches of pairs, as the model body and the fused head consume them.

Two layouts, packed into one row (``pack``) or one row per piece, padded:

- **Sequences** (``share_prefix=False``, and every batch of answers without a rejected side): the 2B
  sequences ``prompt + answer``, chosen 0..B-1 then rejected B..2B-1. Positions restart per sequence.
- **Pair trees** (``share_prefix=True``): y+ is a minimal edit of y-, so both answers agree token for
  token up to the first edit. A pair is forwarded once as ``[prompt | shared | chosen suffix |
  rejected suffix]``, ``shared`` the longest common prefix of the two answers' token ids. Positions
  continue from ``shared`` into *both* suffixes; each suffix attends to the prompt, the shared part
  and itself, never to the other suffix (nor to other pairs). A shared token is scored once and
  counts in both sequence sums, so values and every gradient equal those of the two separate
  sequences (a causal model gives the shared tokens the same hidden states in both).

Every token carries a document id (the sequence, or the pair of a tree; -1 for padding) and a branch
(0 trunk: prompt and shared part; 1 chosen suffix; 2 rejected suffix). The attention rule is: key k is
visible to query q when both are in the same document, k is not after q in the row, and k is on the
trunk or on q's branch (``attention.py`` turns this into a mask); a padding token sees itself only.
The same rule as variable-length segments (``varlen_segments``, built here on the host with the rest
of the batch, so no device value is ever read back): a segment is a maximal run of one document's
branch in a row, or one padding token; its queries are its own tokens, its keys the trunk of its
document (for a suffix) followed by its own tokens, causal with the last query aligned to the last key. Scored tokens are listed with the
chosen answers first, pair by pair in position order (``num_chosen_tokens`` of them), then the
rejected answers' own tokens; ``seq_index`` gives each token's sequence and ``also_token_index`` /
``also_seq_index`` the shared tokens that count in a rejected sum too.
"""
from dataclasses import dataclass

import torch

TRUNK, CHOSEN, REJECTED = 0, 1, 2
BRANCHES = {"trunk": TRUNK, "chosen": CHOSEN, "rejected": REJECTED}


@dataclass
class Batch:
    input_ids: torch.Tensor         # [rows, length]
    position_ids: torch.Tensor      # [rows, length]
    doc_ids: torch.Tensor           # [rows, length] document of each token, -1 for padding
    branch_ids: torch.Tensor        # [rows, length] TRUNK, CHOSEN or REJECTED
    token_positions: torch.Tensor   # [T] indices into the flattened [rows * length] hidden states
    targets: torch.Tensor           # [T] next-token ids (completion tokens only)
    seq_index: torch.Tensor         # [T] in [0, num_sequences): chosen i -> i, rejected i -> B + i
    also_token_index: torch.Tensor  # [S] scored tokens that also count in a second sequence (shared tokens)
    also_seq_index: torch.Tensor    # [S] that second sequence
    num_chosen_tokens: int          # the first num_chosen_tokens of targets are the chosen answers'
    chosen_lengths: torch.Tensor    # [B] completion tokens of each chosen answer
    behavior_logps: object          # [T_chosen] behaviour log-probs of the chosen tokens (first in targets), or None
    num_pairs: int
    num_sequences: int              # 2B, or B without rejected answers
    num_tokens: int                 # real (non-padding) tokens forwarded
    unshared_tokens: int            # tokens the sequence layout would forward
    padding_fraction: float
    packed: bool
    shares_prefix: bool
    cu_seq_q: torch.Tensor          # [S + 1] int32: segment s's queries are flat tokens cu_seq_q[s]:cu_seq_q[s + 1]
    cu_seq_k: torch.Tensor          # [S + 1] int32: its keys are key_index[cu_seq_k[s]:cu_seq_k[s + 1]]
    key_index: torch.Tensor         # [K] flat token index of each gathered key/value
    max_segment_queries: int
    max_segment_keys: int

    def to(self, device):
        """The batch on ``device``: on CUDA every tensor is copied from pinned memory without waiting
        (the copies overlap the work queued before them); elsewhere ``Tensor.to``."""
        move = lambda t: to_device(t, device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Batch(**{k: move(v) for k, v in self.__dict__.items()})


def should_pin(tensor, device):
    """Whether ``tensor`` is staged in pinned (page-locked) host memory before its copy to ``device``:
    a host tensor bound for CUDA. Only a copy from pinned memory leaves the host free; from pageable
    memory a ``non_blocking`` copy still blocks the host until it is done."""
    return tensor.device.type == "cpu" and torch.device(device).type == "cuda"


def to_device(tensor, device):
    """``tensor`` on ``device``, copied without waiting; from pinned memory where ``should_pin``. The
    caching host allocator keeps the pinned buffer until the copy is done."""
    if should_pin(tensor, device):
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def varlen_segments(doc_ids, branch_ids):
    """The attention rule of rows ``doc_ids`` / ``branch_ids`` [rows, length] as variable-length
    segments over the flattened rows: ``(cu_seq_q, cu_seq_k, key_index, max_queries, max_keys)``.

    Segments are the maximal runs of equal (row, document, branch), each padding token alone. Segment
    s attends from its own tokens (queries, in place: ``cu_seq_q`` are the run boundaries) to
    ``key_index[cu_seq_k[s]:cu_seq_k[s + 1]]``: the tokens of its document's trunk run, when s is a
    suffix, then its own, causal aligned bottom-right (query i of n sees the first m - n + i + 1 of m
    keys). A suffix's trunk is the last trunk run before it, which in a row of trees is its document's
    (``[prompt | shared | chosen suffix | rejected suffix]``). O(tokens) time and memory.
    """
    rows, length = doc_ids.shape
    doc, branch = doc_ids.reshape(-1), branch_ids.reshape(-1)
    token = torch.arange(rows * length)
    starts_run = (token % length == 0) | (doc < 0)
    starts_run[1:] |= (doc[1:] != doc[:-1]) | (branch[1:] != branch[:-1])
    run_start = starts_run.nonzero().squeeze(1)
    run_length = torch.diff(run_start, append=torch.tensor([rows * length]))
    is_suffix = (doc[run_start] >= 0) & (branch[run_start] != TRUNK)
    run = torch.arange(len(run_start))
    last_trunk = torch.where(is_suffix, -1, run).cummax(0).values
    if bool((is_suffix & ((last_trunk < 0) | (doc[run_start[last_trunk.clamp(min=0)]] != doc[run_start]))).any()):
        raise ValueError("varlen_segments: a branch run without its document's trunk before it")
    trunk_length = torch.where(is_suffix, run_length[last_trunk], 0)
    key_length = trunk_length + run_length
    # the keys: per segment, the trunk's range (empty for a trunk) then its own range
    range_start = torch.stack([run_start[last_trunk], run_start], 1).reshape(-1)
    range_length = torch.stack([trunk_length, run_length], 1).reshape(-1)
    range_offset = torch.cumsum(range_length, 0) - range_length
    key_index = torch.arange(int(range_length.sum())) + torch.repeat_interleave(range_start - range_offset, range_length)
    zero = torch.zeros(1, dtype=torch.int32)
    cu_seq_q = torch.cat([zero, torch.cumsum(run_length, 0, dtype=torch.int32)])
    cu_seq_k = torch.cat([zero, torch.cumsum(key_length, 0, dtype=torch.int32)])
    return cu_seq_q, cu_seq_k, key_index, int(run_length.max()), int(key_length.max())


def common_prefix_length(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pair_tokens(pair, share_prefix):
    """Tokens forwarded for ``pair``: both sequences, or its tree."""
    prompt, chosen, rejected = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids or [])
    if not share_prefix or pair.rejected_ids is None:
        return prompt + chosen + (prompt + rejected if pair.rejected_ids is not None else 0)
    return prompt + chosen + rejected - common_prefix_length(pair.chosen_ids, pair.rejected_ids)


@dataclass
class _Piece:
    """One contiguous run of tokens in a row: ids, positions and branches, and the scored tokens as
    (index in the piece of the hidden state that predicts it, target, sequence, second sequence or -1)."""
    ids: list
    positions: list
    branches: list
    chosen: list     # scored tokens of chosen answers
    rejected: list   # scored tokens of rejected answers (their own)


def _sequence_piece(prompt, answer, sequence, is_chosen):
    scored = [(len(prompt) - 1 + j, token, sequence, -1) for j, token in enumerate(answer)]
    return _Piece(prompt + answer, list(range(len(prompt) + len(answer))), [TRUNK] * (len(prompt) + len(answer)),
                  scored if is_chosen else [], [] if is_chosen else scored)


def _tree_piece(pair, index, num_pairs):
    """``[prompt | shared | chosen suffix | rejected suffix]`` of pair ``index``."""
    prompt, chosen, rejected = pair.prompt_ids, pair.chosen_ids, pair.rejected_ids
    shared = common_prefix_length(chosen, rejected)
    trunk = len(prompt) + shared
    chosen_suffix, rejected_suffix = chosen[shared:], rejected[shared:]
    ids = prompt + chosen + rejected_suffix
    positions = list(range(trunk + len(chosen_suffix))) + list(range(trunk, trunk + len(rejected_suffix)))
    branches = [TRUNK] * trunk + [CHOSEN] * len(chosen_suffix) + [REJECTED] * len(rejected_suffix)
    rejected_seq = num_pairs + index
    # chosen token j sits at len(prompt) + j and is predicted by the token before it
    chosen_scored = [(len(prompt) - 1 + j, token, index, rejected_seq if j < shared else -1)
                     for j, token in enumerate(chosen)]
    # rejected token j >= shared sits at len(prompt) + len(chosen) + (j - shared); the first of them is
    # predicted by the last trunk token, like the first chosen suffix token
    first_rejected = len(prompt) + len(chosen)
    rejected_scored = [(trunk - 1 if j == shared else first_rejected + j - shared - 1, rejected[j], rejected_seq, -1)
                       for j in range(shared, len(rejected))]
    return _Piece(ids, positions, branches, chosen_scored, rejected_scored)


def collate(pairs, pack, pad_id, share_prefix=False):
    """A ``Batch`` of ``pairs`` (see the module docstring); trees when ``share_prefix`` and the pairs
    have rejected answers."""
    with_rejected = [p.rejected_ids is not None for p in pairs]
    if any(with_rejected) and not all(with_rejected):
        raise ValueError("collate: either every pair has a rejected answer or none has")
    has_behavior = [p.behavior_logps is not None for p in pairs]
    if any(has_behavior) and not all(has_behavior):
        raise ValueError("collate: either every pair has behaviour log-probs or none has")
    num_pairs, trees = len(pairs), share_prefix and all(with_rejected)
    if trees:
        pieces = [_tree_piece(p, i, num_pairs) for i, p in enumerate(pairs)]
    else:
        pieces = [_sequence_piece(p.prompt_ids, p.chosen_ids, i, True) for i, p in enumerate(pairs)]
        pieces += [_sequence_piece(p.prompt_ids, p.rejected_ids, num_pairs + i, False)
                   for i, p in enumerate(pairs) if p.rejected_ids is not None]
    lengths = [len(piece.ids) for piece in pieces]
    if pack:
        rows, length = 1, sum(lengths)
        starts = [(0, sum(lengths[:i])) for i in range(len(pieces))]
    else:
        rows, length = len(pieces), max(lengths)
        starts = [(i, 0) for i in range(len(pieces))]
    input_ids = torch.full((rows, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((rows, length), dtype=torch.long)
    doc_ids = torch.full((rows, length), -1, dtype=torch.long)
    branch_ids = torch.zeros((rows, length), dtype=torch.long)
    chosen_scored, rejected_scored = [], []
    for document, (piece, (row, offset)) in enumerate(zip(pieces, starts)):
        span = slice(offset, offset + len(piece.ids))
        input_ids[row, span] = torch.tensor(piece.ids)
        position_ids[row, span] = torch.tensor(piece.positions)
        doc_ids[row, span] = document
        branch_ids[row, span] = torch.tensor(piece.branches)
        base = row * length + offset
        chosen_scored += [(base + at, *rest) for at, *rest in piece.chosen]
        rejected_scored += [(base + at, *rest) for at, *rest in piece.rejected]
    scored = torch.tensor(chosen_scored + rejected_scored, dtype=torch.long).reshape(-1, 4)
    also = (scored[:, 3] >= 0).nonzero().squeeze(1)
    num_tokens = sum(lengths)
    cu_seq_q, cu_seq_k, key_index, max_queries, max_keys = varlen_segments(doc_ids, branch_ids)
    return Batch(
        input_ids=input_ids, position_ids=position_ids, doc_ids=doc_ids, branch_ids=branch_ids,
        token_positions=scored[:, 0], targets=scored[:, 1], seq_index=scored[:, 2],
        also_token_index=also, also_seq_index=scored[also, 3],
        num_chosen_tokens=len(chosen_scored), chosen_lengths=torch.tensor([len(p.chosen_ids) for p in pairs]),
        behavior_logps=torch.cat([p.behavior_logps for p in pairs]) if all(has_behavior) else None,
        num_pairs=num_pairs, num_sequences=2 * num_pairs if all(with_rejected) else num_pairs,
        num_tokens=num_tokens, unshared_tokens=sum(pair_tokens(p, False) for p in pairs),
        padding_fraction=1.0 - num_tokens / (rows * length), packed=pack, shares_prefix=trees,
        cu_seq_q=cu_seq_q, cu_seq_k=cu_seq_k, key_index=key_index, max_segment_queries=max_queries,
        max_segment_keys=max_keys,
    )
