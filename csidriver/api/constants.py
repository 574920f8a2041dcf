"""Names of the external contract kept from Device-LocalPV (see docs/design.md)."""

from typing import Final

GROUP: Final = "local.openebs.io"
# The version this driver's components read and write (status through the /status subresource). The original's
# v1alpha1 (status in the main resource) stays served and is the storage version: see crds/devicevolume.yaml.
VERSION: Final = "v1alpha2"
ORIGINAL_VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
VOLUME_PLURAL: Final = "devicevolumes"
NODE_PLURAL: Final = "devicenodes"
VOLUME_KIND: Final = "DeviceVolume"
NODE_KIND: Final = "DeviceNode"
SNAPSHOT_PLURAL: Final = "devicesnapshots"
SNAPSHOT_KIND: Final = "DeviceSnapshot"

DEFAULT_NAMESPACE: Final = "openebs"
FINALIZER: Final = "device.openebs.io/finalizer"
NODE_LABEL: Final = "kubernetes.io/nodename"
TOPOLOGY_KEY: Final = "openebs.io/nodename"
CTX_DEVICE_NAME: Final = "openebs.io/devicename"
CTX_CAS_TYPE: Final = "openebs.io/cas-type"
CAS_TYPE: Final = "localpv-device"
# Recorded on each DeviceVolume so a volume can be traced back to the CSI request that made it.
CSI_NAME_ANNOTATION: Final = "local.openebs.io/csi-name"

# On a DeviceNode: comma-separated GPT disk GUIDs that schedulers must skip (kubectl device-localpv cordon-disk).
CORDON_ANNOTATION: Final = "local.openebs.io/cordoned-disks"
# On a DeviceNode: the generation of its `devices` inventory, raised by the node agent with each scan it writes. A
# Ready volume's status.inventoryGeneration is the first generation whose free space accounts for its partition: until
# the DeviceNode reaches it, the controller subtracts the volume itself (its agent need not write after every create).
INVENTORY_GENERATION_ANNOTATION: Final = "local.openebs.io/inventory-generation"

# Filesystems a volume may be formatted with.
SUPPORTED_FS: Final = ("ext4", "xfs", "btrfs")

MIB: Final = 1 << 20
GIB: Final = 1 << 30
DEFAULT_VOLUME_SIZE: Final = GIB

# Condition on a DeviceVolume being deleted that says why its partition is not released yet (status False).
RELEASED_CONDITION = "Released"
RELEASE_IN_USE = "InUse"
RELEASE_DISK_MISSING = "DiskMissing"

# Each agent renews a Lease named by naming.heartbeat_name(node) in the driver namespace, with this label; the
# controller places volumes only on nodes whose agent renewed it recently.
HEARTBEAT_LABEL: Final = "local.openebs.io/agent-heartbeat"
# Condition of a volume whose partition was asked to grow (ControllerExpandVolume): True once grown.
RESIZED_CONDITION = "Resized"
# Set by ControllerExpandVolume on each attempt; the agent names it in its Resized=False condition, so a refusal
# is told apart from an older one.
RESIZE_REQUEST_ANNOTATION = "local.openebs.io/resize-request"
# A volume created as a clone names its source volume here (set by the controller at creation, never changed); its
# agent fills the new partition with a block copy of the source's instead of wiping it.
CLONE_SOURCE_ANNOTATION = "local.openebs.io/clone-of"
# A volume restored from a snapshot names the DeviceSnapshot here (set by the controller at creation, never changed);
# its agent fills the new partition with a block copy of the snapshot's partition instead of wiping it.
RESTORE_SOURCE_ANNOTATION = "local.openebs.io/restored-from"
# Seconds between progress reports (status.copiedBytes) of a copy in progress (a clone, a snapshot, a restore).
COPY_PROGRESS_SECONDS = 2.0
# Set by the controller on a volume whose StorageClass has `placement: RoomToGrow`: its agent carves it where it
# leaves the most room to grow in place (worst fit) instead of best fit. Absent means best fit.
PLACEMENT_ANNOTATION = "local.openebs.io/placement"
PLACEMENT_BEST_FIT = "BestFit"
PLACEMENT_ROOM_TO_GROW = "RoomToGrow"
