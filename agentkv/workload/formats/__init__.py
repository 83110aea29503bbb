"""One module per source format; `agentkv.workload.load` picks among them by content."""
