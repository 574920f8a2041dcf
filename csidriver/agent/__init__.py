"""Node agent reconcilers: disk inventory (DeviceNode) and partitions (DeviceVolume)."""
