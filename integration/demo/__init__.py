"""`sockmesh demo`: a bookinfo-like mesh on loopback, served by the embedded xDS server,
routed by the eBPF datapath for a client in a demo cgroup, with a report at the end."""
