"""Rotary head permutations shared by the steps that reorder rotated features (0.11.2 and 1.30.1)."""

from __future__ import annotations


def permutation(dim_head: int, rot: int, inverse: bool) -> list[int]:
    """Index map within one head: new[j] = old[perm[j]]."""
    perm = list(range(dim_head))
    half = rot // 2
    for i in range(half):
        perm[2 * i], perm[2 * i + 1] = i, i + half
    if inverse:
        inv = [0] * dim_head
        for j, src in enumerate(perm):
            inv[src] = j
        return inv
    return perm


def permute(dim: int, dim_head: int, perm: list[int]):
    def apply(tensor):
        import torch

        index = torch.tensor(perm, device=tensor.device)
        moved = tensor.movedim(dim, 0)
        heads = moved.shape[0] // dim_head
        moved = moved.reshape(heads, dim_head, *moved.shape[1:]).index_select(1, index)
        return moved.reshape(heads * dim_head, *moved.shape[2:]).movedim(0, dim).contiguous()

    return apply
