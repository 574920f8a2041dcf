"""The controller process: CSI Identity + Controller beside the external provisioner."""
