"""Real components for tests, the demo and benchmarks: etcd + kube-apiserver, loop disks, driver processes."""
