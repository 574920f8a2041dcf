"""Domain errors; the gRPC edge maps each class to one status code (csidriver.servicers.edge.CODES)."""


class DriverError(Exception):
    """Base of every error the driver reports to a CSI caller."""


class InvalidArgument(DriverError):
    pass


class NotFound(DriverError):
    pass


class AlreadyExists(DriverError):
    pass


class OutOfRange(DriverError):
    pass


class ResourceExhausted(DriverError):
    pass


class FailedPrecondition(DriverError):
    pass


class Aborted(DriverError):
    """A conflicting operation is in progress; the caller retries."""


class Unavailable(DriverError):
    pass


class DeadlineExceeded(DriverError):
    pass


class Internal(DriverError):
    pass


class Unimplemented(DriverError):
    pass
