"""Machines the fakes describe, taken from published tool output rather than invented.

MI250_DIRECT_MBPS is `rocm-smi --shownodesbw` on a 4 x MI250 server (8 GCDs), as published in
Hugging Face Optimum-AMD's "AMD Instinct GPU connectivity" page: maximum xGMI bandwidth in MB/s
for each directly connected pair (the two dies of a package: 4 links, 200000; dies of different
packages: 2 links, 100000, or 1 link, 50000). Every other pair reads "0-0", "not connected
directly". The same page lists GCDs 0-3 on NUMA node 0 and 4-7 on node 1, and names the good
groups: two devices 0,1 (or 2,3 / 4,5 / 6,7); three devices 0,1,6; four devices 0,1,6,7 or 2,3,4,5.

Not published there, so modelled: hops (1 direct, 2 otherwise) and link weights (15 per xGMI
hop, the KFD's xGMI weight). They only break ties the bandwidths leave.
"""

from __future__ import annotations

MI250_DIRECT_MBPS = {
    (0, 1): 200_000, (2, 3): 200_000, (4, 5): 200_000, (6, 7): 200_000,
    (0, 6): 100_000, (2, 4): 100_000,
    (0, 2): 50_000, (1, 3): 50_000, (1, 5): 50_000, (3, 7): 50_000,
    (4, 6): 50_000, (5, 7): 50_000,
}
MI250_NUMA = {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1, 7: 1}
MI250_PUBLISHED_BEST = {2: [0, 1], 3: [0, 1, 6], 4: [0, 1, 6, 7]}


def mi250_pairs(fake_amdsmi) -> dict:
    """The 8-die MI250 box as fake amdsmi FakePair entries for every pair."""
    xgmi = fake_amdsmi.AmdSmiLinkType.AMDSMI_LINK_TYPE_XGMI
    pairs = {}
    for i in range(8):
        for j in range(i + 1, 8):
            mbps = MI250_DIRECT_MBPS.get((i, j), 0)
            pairs[i, j] = fake_amdsmi.FakePair(
                type=xgmi, hops=1 if mbps else 2, weight=15 if mbps else 30,
                min_bandwidth=50_000 if mbps else 0, max_bandwidth=mbps)
    return pairs


def mi250_gpus(fake_amdsmi) -> list:
    """Eight dies; the second die of each package reports no power, as MI250s do."""
    gpus = []
    for i in range(8):
        gpu = fake_amdsmi.FakeAmdGpu(bdf=f"0000:{0x29 + 0x18 * i:02x}:00.0",
                                     uuid=f"fake-mi250-gcd-{i}")
        if i % 2:
            gpu.average_socket_power = "N/A"
            gpu.power_limit = 0
            gpu.power_cap_uw = 0
        gpus.append(gpu)
    return gpus
