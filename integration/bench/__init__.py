"""The benchmark suite behind `sockmesh bench` and the A/B harness behind `sockmesh ab`.

system.py   what the machine and our processes cost (/proc/stat, RSS, BPF map memory)
nginx.py    nginx backends started by path from configs in a temp dir, stopped by PID
load.py     wrk runs (saturation and paced) and their parsed results
proxies.py  Envoy bootstraps for one hop and a sidecar pair
scenarios.py the data-plane scenarios (direct, kernel, slow path, Envoy, sidecar pair)
control.py  control-plane figures (Istio-sized snapshot, endpoint change, route updates)
report.py   targets, ratios, the printed table, plots and the docs table from the JSON
"""
