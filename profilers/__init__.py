"""GPU, host and NUMA telemetry; imports nothing from Textual or torch.

Entry points: gpu.detect_backend() (NVML, amdsmi or none), sampler.Sampler (the 10 Hz thread),
sampler_process.SamplerProcess (the same in a child process, for `llmtop bench`),
host.HostMonitor, numa.numa_status() / pin_to_node(), topology.recommend_tp_set(), and
report.info_text() / info_dict() / run_top() for `llmtop info` and `llmtop top`.
"""
