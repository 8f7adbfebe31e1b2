"""Time each NVML call the NvmlBackend makes, to find what makes a poll expensive."""

import time

import pynvml

pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
calls = {
    "utilization": lambda: pynvml.nvmlDeviceGetUtilizationRates(h),
    "memory": lambda: pynvml.nvmlDeviceGetMemoryInfo(h),
    "power": lambda: pynvml.nvmlDeviceGetPowerUsage(h),
    "power_limit": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h),
    "temperature": lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
    "clock_sm": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
    "clock_mem": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
    "energy": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
    "processes": lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h),
    "pcie_tx_counter": lambda: pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES]),
    "mem_temp": lambda: pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_MEMORY_TEMP]),
}
for name, fn in calls.items():
    try:
        fn()
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        print(f"{name:18s} {(time.perf_counter() - t0) / 20 * 1e3:8.3f} ms")
    except pynvml.NVMLError as e:
        print(f"{name:18s} error {e}")
