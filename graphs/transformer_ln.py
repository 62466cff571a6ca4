"""A pre-LN Transformer encoder (Vaswani et al. 2017; pre-LN placement as GPT-2 / ViT): two
blocks of x + MHSA(LN(x)), x + MLP(LN(x)) with GELU, and a final LayerNorm. Input (N, T, D)
tokens; the attention is written out (Linear, MatMul, Softmax) rather than
nn.MultiheadAttention, so the exported graph is the plain ops."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._common import randomize_norms, seeded


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(n, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TransformerLN(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.blocks(x))


@seeded(9)
def build():
    gen = torch.Generator().manual_seed(9)
    model = TransformerLN()
    randomize_norms(model)
    return model.eval(), (torch.randn(2, 16, 32, generator=gen),)
