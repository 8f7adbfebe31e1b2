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

    kind: "self", "nvlink", "xgmi", "pcie" (any host path: switch, host bridge, socket link),
    or "unknown" when the vendor library could not say (error holds why; nothing is guessed).
    label: what nvidia-smi topo / rocm-smi --showtopo would print ("NV18", "PIX", "SYS", "XGMI").
    bandwidth_gbps: the direct link's one-way bandwidth (NVLink links x speed; amdsmi's maximum
    bandwidth), None for host paths and for NVLink whose speed the driver does not report.
    weight: the vendor's distance (amdsmi link weight; NVML topology level); lower is closer.
    error: the failed queries about this pair, each named ("link weight: AmdSmiLibraryException:
    ...; bandwidth: ..."); the figures they would have given stay None.
    """

    kind: str
    label: str
    bandwidth_gbps: float | None = None
    links: int | None = None
    hops: int | None = None
    weight: int | None = None
    error: str | None = None

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
    the fewest total hops; then the smallest total vendor weight; then the lowest GPU indices,
    so the answer is stable.

    A criterion counts only where every pair has a figure for it: a weight that failed for one
    pair would otherwise read as 0, the closest of all, and pull the choice to a worse set.
    When a failed query removes a criterion (or a pair's bandwidth), `degraded` says so and the
    ranking uses what is still known."""

    def __init__(self, matrix: TopologyMatrix):
        self.scores: dict[tuple[int, int], float] = {}
        pairs = list(combinations(sorted(matrix.indices), 2))
        links = {p: matrix.link(*p) for p in pairs}
        failed = [link for link in links.values() if link.error or link.kind == "unknown"]
        self.lost: set[tuple[int, int]] = set()  # pairs whose score a failed query took
        for p, link in links.items():
            if link.kind == "unknown" or (link.bandwidth_gbps is None
                                          and "bandwidth" in (link.error or "")):
                self.lost.add(p)
            self.scores[p] = 0.0 if p in self.lost else link.score
        self.hops = {p: link.hops for p, link in links.items()}
        self.weights = {p: link.weight for p, link in links.items()}
        self.use_hops = all(v is not None for v in self.hops.values())
        self.use_weights = all(v is not None for v in self.weights.values())
        self.degraded: str | None = None
        if failed:
            used = [name for name, on in (("hops", self.use_hops), ("link weight",
                                                                    self.use_weights)) if on]
            first = next(link.error for link in failed if link.error) if any(
                link.error for link in failed) else "link not reported"
            self.degraded = (f"degraded: {len(failed)} of {len(pairs)} pairs not fully read "
                             f"({first}); ranked by what is known"
                             + (f" ({', '.join(used)})" if used else ""))

    def __call__(self, group: tuple[int, ...]) -> tuple:
        group = tuple(sorted(group))
        pairs = list(combinations(group, 2))
        total = sum(self.scores[p] for p in pairs)
        hops = sum(self.hops[p] for p in pairs) if self.use_hops else 0
        weight = sum(self.weights[p] for p in pairs) if self.use_weights else 0
        return (_bottleneck(self.scores, group), total, -hops, -weight, tuple(-g for g in group))


def recommend_tp_set(matrix: TopologyMatrix, k: int) -> list[int]:
    """The k GPUs to run tensor parallelism on, judged from the link matrix alone."""
    return _recommend(matrix, k, _Scorer(matrix))


def _recommend(matrix: TopologyMatrix, k: int, score: _Scorer) -> list[int]:
    n = len(matrix.indices)
    if not 1 <= k <= n:
        raise ValueError(f"cannot pick {k} of {n} GPUs")
    gpus = sorted(matrix.indices)
    if comb(n, k) <= EXHAUSTIVE_LIMIT:
        return list(max(combinations(gpus, k), key=score))
    group = max(combinations(gpus, 2), key=score)
    while len(group) < k:
        group = max((tuple(sorted(group + (g,))) for g in gpus if g not in group), key=score)
    return list(group)


@dataclass
class Recommendation:
    """A TP set with the one line that says why, and whether failed queries weakened it."""

    k: int
    gpus: list[int]
    weakest_link: float
    why: str               # "TP=4: GPUs 0,1,6,7: weakest link it must cross 100 GB/s; ..."
    degraded: str | None   # what failed and what the ranking used; None when all was read


def recommend(matrix: TopologyMatrix, k: int) -> Recommendation:
    """recommend_tp_set() with its reason, for `llmtop info` and the GPU panel."""
    score = _Scorer(matrix)
    group = _recommend(matrix, k, score)
    weakest = _bottleneck(score.scores, tuple(group))
    lost = any(p in score.lost for p in combinations(group, 2))
    parts = ["its links' bandwidth unknown" if lost else _weakest_words(matrix, group, weakest),
             _hop_words(matrix, group)]
    why = f"TP={k}: GPUs {','.join(map(str, group))}: " + "; ".join(p for p in parts if p)
    return Recommendation(k=k, gpus=group, weakest_link=weakest,
                          why=why + (" [degraded]" if score.degraded else ""),
                          degraded=score.degraded)


def _weakest_words(matrix: TopologyMatrix, group: list[int], weakest: float) -> str:
    if len(group) < 2:
        return "one GPU, no collective"
    links = [matrix.link(a, b) for a, b in combinations(group, 2)]
    if weakest == 0:
        return "some traffic must cross a host path (PCIe or the socket link)"
    if any(link.bandwidth_gbps for link in links):
        return f"weakest link it must cross {weakest:g} GB/s"
    counts = {link.links for link in links if link.kind == "nvlink"}
    if len(counts) == 1 and len(links) > 1 or len(links) == 1:
        return f"every pair NV{int(weakest)} (no NVLink speed reported)"
    return f"weakest link it must cross NV{int(weakest)} (no NVLink speed reported)"


_HOP_WORDS = {1: "one hop", 2: "two hops", 3: "three hops"}


def _hop_words(matrix: TopologyMatrix, group: list[int]) -> str:
    hops = [matrix.link(a, b).hops for a, b in combinations(group, 2)]
    if not hops or any(h is None for h in hops):
        return ""
    if len(set(hops)) == 1:
        return "every pair " + _HOP_WORDS.get(hops[0], f"{hops[0]} hops")
    direct = sum(1 for h in hops if h == min(hops))
    return (f"{direct} of {len(hops)} pairs {_HOP_WORDS.get(min(hops), f'{min(hops)} hops')}, "
            f"the others up to {_HOP_WORDS.get(max(hops), f'{max(hops)} hops')}")


def tp_sizes(n: int) -> list[int]:
    """Tensor-parallel degrees worth proposing: powers of two (head counts divide by them)."""
    sizes, k = [], 2
    while k <= n:
        sizes.append(k)
        k *= 2
    return sizes


def marked_size(n: int, tp: int | None = None) -> int | None:
    """The TP degree whose set the matrix marks: the engine's when it runs on several GPUs,
    else the largest proposed degree that still leaves a choice (all n GPUs leave none)."""
    sizes = tp_sizes(n)
    if tp is not None and tp in sizes:
        return tp
    choices = [k for k in sizes if k < n]
    return choices[-1] if choices else (sizes[-1] if sizes else None)


def cell_text(link: Link, compact: bool = False) -> str:
    """One matrix cell a person can read: NVLink count and bandwidth (NV18 464G), xGMI hops,
    weight and direct bandwidth (1h w15 200G), the PCIe path (PIX, SYS; amdsmi: PCIe 2h w40),
    "n/a" for a pair that could not be read; "?" for one failed figure of a pair. `compact`
    (a narrow panel) keeps the link count or hops and the direct GB/s: NV18, 1h200, P2h."""
    if compact:
        return _compact_cell(link)
    if link.kind == "self":
        return "X"
    if link.kind == "unknown":
        return "n/a"

    def known(v: object) -> str:
        return "?" if v is None else str(v)
    bandwidth = f" {link.bandwidth_gbps:.0f}G" if link.bandwidth_gbps else ""
    if link.kind == "nvlink":
        return f"NV{link.links}{bandwidth}"
    if link.kind == "xgmi":
        return f"{known(link.hops)}h w{known(link.weight)}{bandwidth}"
    if link.hops is not None or link.label == "PCIE":
        return f"PCIe {known(link.hops)}h w{known(link.weight)}"
    return link.label


def _compact_cell(link: Link) -> str:
    if link.kind in ("self", "unknown"):
        return cell_text(link)
    hops = "?" if link.hops is None else str(link.hops)
    if link.kind == "nvlink":
        return f"NV{link.links}"
    if link.kind == "xgmi":
        return f"{hops}h" + (f"{link.bandwidth_gbps:.0f}" if link.bandwidth_gbps else "")
    return f"P{hops}h" if link.hops is not None or link.label == "PCIE" else link.label


def legend(matrix: TopologyMatrix, compact: bool = False) -> str:
    """What the cells of this matrix mean (as cell_text wrote them, compact or not)."""
    kinds = {link.kind for row in matrix.links for link in row}
    parts = []
    if "nvlink" in kinds:
        parts.append("NVn = n NVLinks" + ("" if compact else ", G = their GB/s one way"))
    if "xgmi" in kinds:
        parts.append("xGMI: h = hops, then direct-link GB/s one way (weights: llmtop info)"
                     if compact else
                     "xGMI: h = hops, w = link weight, G = direct-link GB/s one way")
    if "pcie" in kinds and compact and any(link.hops is not None for row in matrix.links
                                           for link in row if link.kind == "pcie"):
        parts.append("Pnh = PCIe, n hops")
    if "pcie" in kinds:
        parts.append("PCIe: PIX/PXB one switch, PHB host bridge, NODE/SYS across the host")
    if "unknown" in kinds or any(link.error for row in matrix.links for link in row):
        parts.append("n/a or ? = the query failed (listed below)")
    return "; ".join(parts)


def matrix_rows(matrix: TopologyMatrix, marked: list[int], mark: str = "*",
                compact: bool = False) -> list[list[str]]:
    """The matrix as rows of cell strings, header row first; the GPUs in `marked` carry
    `mark` on their row and column headers."""
    def head(i: int) -> str:
        return f"GPU{i}{mark if i in marked else ''}"
    rows = [[""] + [head(i) for i in matrix.indices]]
    for i, row in zip(matrix.indices, matrix.links):
        rows.append([head(i)] + [cell_text(link, compact) for link in row])
    return rows


def link_errors(matrix: TopologyMatrix) -> list[str]:
    """Each failed query once: "GPU0-GPU1: link weight: ..." (the matrix is symmetric, so a
    pair is listed from its lower index)."""
    out = []
    for a, row in zip(matrix.indices, matrix.links):
        for b, link in zip(matrix.indices, row):
            if link.error and a < b:
                out.append(f"GPU{a}-GPU{b}: {link.error}")
    return out
