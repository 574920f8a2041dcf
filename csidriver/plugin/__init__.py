"""`kubectl device-localpv`: the operator's commands."""
