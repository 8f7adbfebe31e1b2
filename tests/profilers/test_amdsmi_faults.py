"""AmdSmiBackend when amdsmi fails: each of the package's exception families, raised by the
fake from start-up, per-GPU calls, the topology queries and shutdown. Failed figures are
n/a and listed, never invented; the recommendation says when it is degraded."""

from __future__ import annotations

import pytest
from fakes.loader import load_fake
from fakes.machines import MI250_PUBLISHED_BEST, mi250_gpus, mi250_pairs
from llmtop.profilers.amdsmi_backend import AmdSmiBackend
from llmtop.profilers.gpu import BackendUnavailable
from llmtop.profilers.topology import recommend


def families(fake) -> dict:
    """One instance of each exception family the real amdsmi_interface raises."""
    return {"library": fake.AmdSmiLibraryException(fake.AMDSMI_STATUS_NO_PERM),
            "retry": fake.AmdSmiRetryException(),
            "timeout": fake.AmdSmiTimeoutException(),
            "parameter": fake.AmdSmiParameterException(1, fake.amdsmi_processor_handle),
            "key": fake.AmdSmiKeyException("gfx_activity")}


FAMILIES = ["library", "retry", "timeout", "parameter", "key"]
LINES = {"library": "AmdSmiLibraryException: Error code: 10 | AMDSMI_STATUS_NO_PERM - "
                    "Permission Denied",
         "retry": "AmdSmiRetryException: Error code: 9 | AMDSMI_STATUS_RETRY - Retry operation",
         "timeout": "AmdSmiTimeoutException: Error code: 8 | AMDSMI_STATUS_TIMEOUT - Timeout in "
                    "API call",
         "parameter": "AmdSmiParameterException: Invalid parameter: Actual type: <class 'int'> "
                      "Expected type: <class 'amdsmi.amdsmi_processor_handle'>",
         "key": "AmdSmiKeyException: Key gfx_activity is missing from dictionary"}


@pytest.mark.parametrize("call", ["amdsmi_init", "amdsmi_get_processor_handles"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_backend_that_cannot_start_is_one_line(monkeypatch, family, call):
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), faults={call: families(fake)[family]})
    with pytest.raises(BackendUnavailable) as caught:
        AmdSmiBackend()
    message = str(caught.value)
    assert "\n" not in message and message.startswith("amdsmi: init failed (")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_failing_die_reads_na_with_its_error_and_the_others_run(monkeypatch, family):
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), mi250_pairs(fake), faults={("*", 3): families(fake)[family]})
    backend = AmdSmiBackend()
    devices = backend.devices()
    assert devices[3].error == LINES[family] and devices[3].name == "n/a"
    assert devices[2].error is None and devices[2].pci_bus_id == "0000:59:00.0"
    samples = backend.sample()
    assert samples[3].error == LINES[family] and samples[3].util_pct is None
    assert samples[2].error is None and samples[2].util_pct == 0 and samples[2].power_w == 90
    matrix = backend.topology()
    assert matrix.link(3, 2).kind == "unknown" and LINES[family] in matrix.link(3, 2).error
    assert matrix.link(0, 1).kind == "xgmi"


@pytest.mark.parametrize("family", FAMILIES)
def test_close_never_raises(monkeypatch, family):
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), faults={"amdsmi_shut_down": families(fake)[family]})
    backend = AmdSmiBackend()
    backend.close()
    assert backend.errors[-1, "shutdown"] == LINES[family]


def test_a_failed_link_type_is_unknown_not_pcie(monkeypatch):
    """The bug: a failed query was shown as PCIE and bandwidth "0, host path"."""
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), mi250_pairs(fake), faults={
        ("amdsmi_topo_get_link_type", 0): fake.AmdSmiTimeoutException()})
    link = AmdSmiBackend().topology().link(0, 1)
    assert (link.kind, link.label, link.bandwidth_gbps, link.hops) == ("unknown", "n/a", None, None)
    assert link.error == f"link type: {LINES['timeout']}"


def test_failed_weights_leave_the_choice_to_hops_and_say_degraded(monkeypatch):
    """Weights failing for GPU 0's pairs would read as 0, the closest of all, and pull the
    choice to a worse set; the recommender ranks by what is known and says so."""
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), mi250_pairs(fake), faults={
        ("amdsmi_topo_get_link_weight", 0): fake.AmdSmiRetryException()})
    matrix = AmdSmiBackend().topology()
    assert matrix.link(0, 5).weight is None and "link weight" in matrix.link(0, 5).error
    for k, best in MI250_PUBLISHED_BEST.items():
        rec = recommend(matrix, k)
        assert rec.gpus == best, k
        assert rec.degraded.startswith("degraded: 7 of 28 pairs not fully read (link weight: "
                                       "AmdSmiRetryException")
        assert rec.degraded.endswith("ranked by what is known (hops)")


def test_failed_bandwidths_fall_back_to_hops(monkeypatch):
    """Without any bandwidth, hops are what is left: every TP=2 choice is a one-hop pair."""
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), mi250_pairs(fake), faults={
        "amdsmi_get_minmax_bandwidth_between_processors":
            fake.AmdSmiLibraryException(fake.AMDSMI_STATUS_BUSY)})
    matrix = AmdSmiBackend().topology()
    rec = recommend(matrix, 2)
    assert all(matrix.link(a, b).hops == 1 for a in rec.gpus for b in rec.gpus if a != b)
    assert rec.degraded.endswith("ranked by what is known (hops, link weight)")
    assert rec.why == "TP=2: GPUs 0,1: its links' bandwidth unknown; every pair one hop [degraded]"


def test_xgmi_traffic_from_link_metrics_on_mi250x(monkeypatch):
    """MI250X's gpu_metrics accumulators read "N/A"; amdsmi_get_link_metrics counts per link."""
    fake = load_fake(monkeypatch, "amdsmi")
    gpus = mi250_gpus(fake)
    gpus[0].link_metrics = [("0000:41:00.0", 0, 0), ("0000:59:00.0", 0, 0)]
    fake.configure(gpus, mi250_pairs(fake))
    backend = AmdSmiBackend()
    first = backend.sample()[0]
    gpus[0].link_metrics = [("0000:41:00.0", 2048, 1024), ("0000:59:00.0", 0, 3072)]
    second = backend.sample()[0]
    dt = (second.t_ns - first.t_ns) / 1e9
    assert second.link_tx_bps == pytest.approx(4096 * 1024 / dt)   # written
    assert second.link_rx_bps == pytest.approx(2048 * 1024 / dt)   # read
    assert backend.sample()[1].link_tx_bps is None  # die 1: neither source has counters


def test_an_unreported_library_version_is_na(monkeypatch):
    fake = load_fake(monkeypatch, "amdsmi")
    fake.configure(mi250_gpus(fake), lib_version={"build": "x"})
    assert AmdSmiBackend().describe()["amdsmi"] == "n/a"
    fake.configure(mi250_gpus(fake), faults={"amdsmi_get_lib_version": fake.AmdSmiRetryException()})
    backend = AmdSmiBackend()
    assert backend.describe()["amdsmi"] == "n/a"
    assert backend.errors[-1, "lib_version"] == LINES["retry"]
    fake.configure(mi250_gpus(fake))
    assert AmdSmiBackend().describe()["amdsmi"] == "25.5.1"
