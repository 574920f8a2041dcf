"""In-memory fakes of the driver's seams (csidriver.agent.ports, the provisioner's store), for fast unit tests.
tests/contract runs the same checks against these and against the real API server, so they cannot drift."""
