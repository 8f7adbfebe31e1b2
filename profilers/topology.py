"""The GPU-to-GPU link matrix and a tensor-parallel set recommender that reasons from it.

Tensor parallelism all-reduces activations after every attention and MLP block, so a TP group
runs at the pace of the slowest link its collectives must cross. On 4 x MI250 (8 dies) the
links are uneven: the two dies of one package share 4 xGMI links (200 GB/s), dies of different
packages share 2, 1 or none. Which dies to group is a property of the matrix, so the recommender
reads it instead of carrying a table of known machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb

# Above this many candidate sets the recommender grows a set greedily instead of trying all:
# C(16, 8) = 12870 (any single node today) is exhaustive; 64 MI300X partitions would not be.
EXHAUSTIVE_LIMIT = 50_000


@dataclass
class Link:
    """How one GPU reaches another.

    kind: "self", "nvlink", "xgmi" or "pcie" (any host path: switch, host bridge, socket link).
    label: what nvidia-smi topo / rocm-smi --showtopo would print ("NV18", "PIX", "SYS", "XGMI").
    bandwidth_gbps: the direct link's one-way bandwidth (NVLink links x speed; amdsmi's maximum
    bandwidth), None for host paths and for NVLink whose speed the driver does not report.
    weight: the vendor's distance (amdsmi link weight; NVML topology level); lower is closer.
    """

    kind: str
    label: str
    bandwidth_gbps: float | None = None
    links: int | None = None
    hops: int | None = None
    weight: int | None = None

    @property
    def score(self) -> float:
        """The pair's worth for collectives: direct-link bandwidth, else 0.

        Host paths score 0: they share the CPU's root complex, so they are the floor any direct
        link beats. NVLink with no reported speed scores its link count, which keeps "more links
        rank higher" without inventing a bandwidth figure.
        """
        if self.bandwidth_gbps is not None:
            return self.bandwidth_gbps
        return float(self.links or 0)


@dataclass
class TopologyMatrix:
    """links[a][b] is how the GPU indices[a] reaches indices[b]."""

    source: str
    indices: list[int]
    links: list[list[Link]]

    def link(self, i: int, j: int) -> Link:
        """The link between GPU indices i and j (not matrix positions)."""
        return self.links[self.indices.index(i)][self.indices.index(j)]


def _bottleneck(scores: dict[tuple[int, int], float], group: tuple[int, ...]) -> float:
    """The slowest link the group cannot avoid: the weakest edge of its widest spanning tree.

    A collective over the group has to cross at least this link, however it routes (Kruskal on
    descending score; the edge that joins the last two components is the answer).
    """
    if len(group) < 2:
        return float("inf")
    parent = {g: g for g in group}

    def root(g: int) -> int:
        while parent[g] != g:
            g = parent[g]
        return g

    edges = sorted(((scores[a, b], a, b) for a, b in combinations(group, 2)), reverse=True)
    components = len(group)
    for score, a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[ra] = rb
            components -= 1
            if components == 1:
                return score
    raise AssertionError("a complete graph is always connected")


def weakest_link(matrix: TopologyMatrix, group: list[int]) -> float:
    """The score of the slowest link a collective over `group` must cross (inf for one GPU);
    `llmtop info` prints it next to the recommended set."""
    return _bottleneck(_Scorer(matrix).scores, tuple(sorted(group)))


class _Scorer:
    """Ranks a group; tuples compare in order: the weakest unavoidable link as fast as possible;
    then the most total pairwise bandwidth (more and faster links to spread rings over); then
    the smallest total vendor weight; then the lowest GPU indices, so the answer is stable."""

    def __init__(self, matrix: TopologyMatrix):
        self.scores: dict[tuple[int, int], float] = {}
        self.weights: dict[tuple[int, int], int] = {}
        for a, b in combinations(sorted(matrix.indices), 2):
            link = matrix.link(a, b)
            self.scores[a, b] = link.score
            self.weights[a, b] = link.weight or 0

    def __call__(self, group: tuple[int, ...]) -> tuple:
        group = tuple(sorted(group))
        pairs = list(combinations(group, 2))
        total = sum(self.scores[p] for p in pairs)
        weight = sum(self.weights[p] for p in pairs)
        return (_bottleneck(self.scores, group), total, -weight, tuple(-g for g in group))


def recommend_tp_set(matrix: TopologyMatrix, k: int) -> list[int]:
    """The k GPUs to run tensor parallelism on, judged from the link matrix alone."""
    n = len(matrix.indices)
    if not 1 <= k <= n:
        raise ValueError(f"cannot pick {k} of {n} GPUs")
    score = _Scorer(matrix)
    gpus = sorted(matrix.indices)
    if comb(n, k) <= EXHAUSTIVE_LIMIT:
        return list(max(combinations(gpus, k), key=score))
    group = max(combinations(gpus, 2), key=score)
    while len(group) < k:
        group = max((tuple(sorted(group + (g,))) for g in gpus if g not in group), key=score)
    return list(group)
